"""Prompt templates: one TOML file per prompt kind, `system` and `user`, `$placeholders`.

The package ships `prompts/<kind>.toml` for every kind a strategy asks for (direct, cot,
decompose, evolve, tests, repair) and for instruction generation and the seed DB
(instruction, evol-instruct, seed-function), each with its one-shot example. A user directory
(`--prompts DIR`) overrides any of them file by file; a file there must define the same
placeholders as the shipped one (checked at load, with the file named in the error).

The `### TASK: <kind>` marker line in each `user` text is a heading to a real teacher and
tells the local emulator (a test double) which kind of answer to script.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from amr_async.teacher.types import ChatRequest, Message

# Kind -> the placeholders its `user` text may use (all are supplied when rendering).
KINDS: dict[str, frozenset[str]] = {
    "direct": frozenset({"instruction"}),
    "cot": frozenset({"instruction"}),
    "decompose": frozenset({"instruction", "direct_answer"}),
    "evolve": frozenset({"instruction", "stubs", "modules"}),
    "tests": frozenset({"function_name", "code"}),
    "repair": frozenset({"instruction", "answer", "failures"}),
    # instruction generation and the seed DB
    "instruction": frozenset({"examples"}),
    "evol-instruct": frozenset({"instruction", "heuristic"}),
    "seed-function": frozenset({"topic", "index"}),
}


class PromptError(ValueError):
    """A template file is missing, malformed, or uses an unknown placeholder."""


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """One prompt kind: a system text and a `string.Template` user text."""

    kind: str
    system: str
    user: string.Template
    source: str  # where it was loaded from (for errors and provenance)

    def render(self, **values: str) -> tuple[str, str]:
        """(system, user) with every `$placeholder` substituted."""
        return self.system, self.user.substitute(values)

    def request(
        self, *, model: str, max_tokens: int, temperature: float, **values: str
    ) -> ChatRequest:
        """The chat request for this prompt with `values` filled in."""
        system, user = self.render(**values)
        return ChatRequest(
            model=model,
            messages=(Message("user", user),),
            max_tokens=max_tokens,
            system=system or None,
            temperature=temperature,
        )


def parse_template(kind: str, text: str, source: str) -> PromptTemplate:
    """Parse one template file's text.

    Raises:
        PromptError: not TOML, `system`/`user` missing or not strings, or a placeholder
            the kind does not supply.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{source}: not valid TOML: {exc}") from None
    for key in ("system", "user"):
        if not isinstance(data.get(key), str):
            raise PromptError(f"{source}: field '{key}' must be a string")
    user = string.Template(data["user"])
    if not user.is_valid():
        raise PromptError(f"{source}: field 'user' has an invalid '$' placeholder")
    used = set(user.get_identifiers())
    unknown = used - KINDS[kind]
    if unknown:
        raise PromptError(
            f"{source}: field 'user' uses unknown placeholder(s) "
            f"{', '.join('$' + u for u in sorted(unknown))}; "
            f"{kind} supplies {', '.join('$' + k for k in sorted(KINDS[kind]))}"
        )
    return PromptTemplate(kind, data["system"].strip(), user, source)


def load_templates(directory: Path | None = None) -> dict[str, PromptTemplate]:
    """Every kind's template: from `directory` where it has `<kind>.toml`, else shipped.

    Raises:
        PromptError: a file is malformed (named in the message), or `directory` is not one.
    """
    if directory is not None and not directory.is_dir():
        raise PromptError(f"prompt directory {directory} does not exist")
    shipped = resources.files("amr_async.pipeline").joinpath("prompts")
    out: dict[str, PromptTemplate] = {}
    for kind in KINDS:
        name = f"{kind}.toml"
        own = directory / name if directory is not None else None
        if own is not None and own.is_file():
            out[kind] = parse_template(kind, own.read_text(encoding="utf-8"), str(own))
        else:
            text = shipped.joinpath(name).read_text(encoding="utf-8")
            out[kind] = parse_template(kind, text, f"amr_async/pipeline/prompts/{name}")
    return out


def code_block(text: str) -> str:
    """`text` fenced as a Python block (for code placed inside a prompt)."""
    return f"```python\n{text.rstrip()}\n```"
