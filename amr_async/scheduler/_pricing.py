"""Dollar cost of answers, from a pricing table in a TOML data file.

The package ships `pricing.toml`; users merge their own files over it (new models, changed
prices, their negotiated rates). Errors name the file and the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from amr_async.teacher.types import Usage

_PER = 1_000_000.0
_FIELDS = ("input", "output", "cached_input", "cache_write", "batch_input", "batch_output")


class PricingError(ValueError):
    """A pricing file that cannot be used; the message names the file and field."""


@dataclass(slots=True, frozen=True)
class Price:
    """US dollars per million tokens for one model.

    Missing optional prices fall back: cached input and cache writes to the input price,
    batch prices to the standard ones.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None

    def cost(self, usage: Usage, *, batch: bool = False, cached_in_input: bool = True) -> float:
        """Dollars for one answer's `usage` (`batch` for Batch API prices).

        Args:
            usage: the reported usage.
            batch: price at the Batch API rates.
            cached_in_input: OpenAI counts cached prompt tokens inside `input_tokens`;
                Anthropic reports cache reads apart from them (pass False).
        """
        input_price = self.batch_input if batch and self.batch_input is not None else self.input
        output_price = self.batch_output if batch and self.batch_output is not None else self.output
        cached_price = self.cached_input if self.cached_input is not None else input_price
        write_price = self.cache_write if self.cache_write is not None else input_price
        cached = usage.cached_input_tokens
        uncached = usage.input_tokens
        if cached_in_input:
            cached = min(cached, uncached)
            uncached -= cached
        dollars = (
            uncached * input_price
            + cached * cached_price
            + usage.cache_creation_tokens * write_price
            + usage.output_tokens * output_price
        )
        return dollars / _PER


class PricingTable:
    """Model name → `Price`, exact or by longest prefix. Immutable once loaded."""

    __slots__ = ("_found", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        # Every lookup's answer, by model: a run prices each call twice (dispatcher and
        # journal) and an unlisted model would otherwise scan the whole table each time.
        # Bounded by the models a process asks about.
        self._found: dict[str, Price | None] = {}

    @classmethod
    def load(cls, overrides: Iterable[str | Path] = ()) -> PricingTable:
        """The shipped table with each file of `overrides` merged over it, in order.

        Raises:
            PricingError: naming the file and field of a bad entry.
        """
        shipped = resources.files("amr_async.scheduler").joinpath("pricing.toml")
        raw: dict[str, dict[str, float]] = {}
        _merge(raw, tomllib.loads(shipped.read_text(encoding="utf-8")), "pricing.toml")
        for path in overrides:
            path = Path(path)
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise PricingError(f"{path}: {exc}") from None
            _merge(raw, data, str(path))
        prices = {}
        for model, entry in raw.items():
            if "input" not in entry or "output" not in entry:
                raise PricingError(f"pricing: models.{model!r} needs both input and output")
            prices[model] = Price(**entry)
        return cls(prices)

    def price(self, model: str) -> Price | None:
        """The price of `model`: exact name, else the longest listed prefix, else None."""
        try:
            return self._found[model]
        except KeyError:
            pass
        found = self._prices.get(model)
        if found is None:
            best = ""
            for name in self._prices:
                if model.startswith(name) and len(name) > len(best):
                    best = name
            found = self._prices[best] if best else None
        self._found[model] = found
        return found

    def cost(
        self, model: str, usage: Usage, *, batch: bool = False, cached_in_input: bool = True
    ) -> float | None:
        """Dollars for `usage` on `model`; None when the model has no price (see `Price.cost`)."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(usage, batch=batch, cached_in_input=cached_in_input)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.price(model) is not None


def _merge(raw: dict[str, dict[str, float]], data: Mapping[str, object], origin: str) -> None:
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PricingError(f"{origin}: 'models' must be a table")
    for model, entry in models.items():
        if not isinstance(entry, dict):
            raise PricingError(f"{origin}: models.{model!r} must be a table")
        merged = raw.setdefault(model, {})
        for key, value in entry.items():
            where = f"{origin}: models.{model!r}.{key}"
            if key not in _FIELDS:
                raise PricingError(f"{where}: unknown field (expected one of {_FIELDS})")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise PricingError(f"{where}: must be a number >= 0, got {value!r}")
            merged[key] = float(value)
