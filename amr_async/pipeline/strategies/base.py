"""What a strategy is: an ordered list of stages and how their outputs make a record.

The runner owns resume: it gives each stage the outputs of the stages before it (loaded
from the journal for a resumed item), skips stages already completed, journals each
completed stage, and finally writes the strategy's record. A stage only computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from amr_async.pipeline._input import InputItem
from amr_async.pipeline._teacher import JournaledTeacher

# The verdict of a finished item whose record must not enter the output (e.g. its final
# response failed the final check under `--drop-failed`): the runner journals it, keeps it
# out of the output file and lists it, with its record, in the rejects file.
DROPPED = "dropped"


class ItemFailed(Exception):
    """A stage cannot complete this item; the reason is recorded (resume tries again)."""


@dataclass(slots=True, frozen=True)
class StageResult:
    """A completed stage: its output (JSON-ready) and where it came from."""

    output: Any
    provenance: Mapping[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    """One step of a strategy for one item."""

    @property
    def name(self) -> str: ...

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        """Compute this stage from the item and earlier stages' outputs.

        Raises:
            ItemFailed: the item cannot be completed (reason in the message).
            BudgetExhausted: a call was refused by the budget (the item stays resumable).
        """
        ...


class Strategy(Protocol):
    """A named pipeline: stages in order, and the output record they make."""

    @property
    def name(self) -> str: ...

    @property
    def stages(self) -> Sequence[Stage]: ...

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The output record (with `id`) and its verdict, once every stage is done.

        The verdict `DROPPED` keeps the record out of the output (see `DROPPED`).
        """
        ...


@runtime_checkable
class Windowed(Protocol):
    """A strategy whose items share state that grows per window of input lines.

    Window w holds lines `w*size+1 ... (w+1)*size`. The runner calls `begin_window` for
    window w only after `end_window` of the window before it, and lets no item of w run
    its stages from the strategy's `snapshot_stage` on (the first stage that reads the
    window's state; optional attribute, default: the first stage) before that. Stages
    before it run ahead, while earlier windows finish. `end_window` runs once every item
    of the window is finished; on resume, records finished in an earlier attempt are
    included.
    """

    @property
    def window_size(self) -> int: ...

    async def begin_window(self, index: int) -> None:
        """Window `index` (0-based) reads the state as it is now: every earlier window merged."""
        ...

    async def end_window(self, records: Sequence[Mapping[str, Any]]) -> None:
        """The window's finished records, in input order (failed items have none)."""
        ...


class WindowAbandoned(Exception):
    """The run stopped while a stage waited for its window's state; the item stays resumable."""


@runtime_checkable
class Speculative(Windowed, Protocol):
    """A windowed strategy whose items may start their gated stages before their window opens.

    Window w's state is the state after windows < w merged. While an earlier window waits
    for its last items (e.g. one sandbox job running to its CPU limit), the runner may open
    w speculatively: once every item of every unmerged window before w has a bound on what
    it may add (`additions_bound`), it calls `speculate_window` with all those bounds, and
    the gated stages of w's items run against the state as merged so far. Each such stage
    must return exactly what it would return once w opens for real: it proves that nothing
    in the bound changes its result, or waits for `begin_window(w)` and computes again
    (raising `WindowAbandoned` if the run stops first). Outputs therefore never depend on
    speculation, only the wall time does.
    """

    def additions_bound(self, outputs: Mapping[str, Any]) -> Sequence[str] | None:
        """What an item with these completed stage outputs may still add at its window's
        merge (a superset: module codes), or None while that is not known yet."""
        ...

    async def speculate_window(self, index: int, additions: Sequence[str]) -> bool:
        """Open window `index` over the state merged so far, given every module code the
        windows still unmerged before it may add; False: cannot (the runner waits)."""
        ...

    def abandon_windows(self) -> None:
        """The run stops: stages waiting for their window to open raise `WindowAbandoned`."""
        ...
