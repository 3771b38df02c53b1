"""The one door every pipeline teacher call goes through: journal, budget, dispatch.

`JournaledTeacher.call(request, item_id=..., stage=...)`:

1. key the request (`amr_async.journal.request_key`); if the run's journal holds an answer
   for it, return that answer: it is never sent again;
2. if a budget cap is reached, raise `BudgetExhausted` (nothing is sent);
3. send it through `send` (the dispatcher's `submit`, which limits and retries);
4. journal a paid answer (ok or truncated) durably, with its tokens and $, and only then
   return it to the caller.

The dispatcher's own lookup/on-outcome hooks are not used: they see the request only, and
the journal also wants the item and stage each call belongs to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from amr_async.journal import Budget, CostTotals, RunJournal, request_key
from amr_async.teacher.types import ChatRequest, Outcome, OutcomeKind, Provider, Usage

Send = Callable[[ChatRequest], Awaitable[Outcome]]
Pricer = Callable[[str, Usage], float | None]


class BudgetExhausted(Exception):
    """A budget cap is reached: no new call may be sent."""


class TeacherUnavailable(Exception):
    """The teacher refuses every call (bad key, exhausted quota): stop, resume once fixed."""


# Failures no other request can get past either: stop the run rather than fail every item.
_STOPS_THE_RUN = frozenset({OutcomeKind.AUTH, OutcomeKind.QUOTA_EXHAUSTED})


class JournaledTeacher:
    """Answers teacher calls from the journal or the wire, within a budget.

    Shared by all tasks of one run on one event loop.

    Args:
        send: sends one request and returns its final outcome (e.g. `Dispatcher.submit`).
        provider: the wire protocol (part of the journal key).
        run: the run's journal; None runs without one (benchmarks' baseline).
        budget: spending caps.
        price: dollars for (model, usage); None when the model has no price (counted $0).
    """

    def __init__(
        self,
        send: Send,
        *,
        provider: Provider,
        run: RunJournal | None,
        budget: Budget | None = None,
        price: Pricer | None = None,
    ) -> None:
        self._send = send
        self.provider = provider
        self.run = run
        self.budget = budget or Budget()
        self._price = price or (lambda model, usage: None)
        self._totals = run.totals if run is not None else CostTotals()
        self.unpriced_models: set[str] = set()
        self.journal_hits = 0  # calls answered from the journal, not sent

    @property
    def totals(self) -> CostTotals:
        """What the run has spent (including earlier attempts of a resumed run)."""
        return self._totals

    def price_of(self, model: str, usage: Usage) -> float:
        """Dollars for `usage` on `model` ($0 when the model has no price)."""
        return self._price(model, usage) or 0.0

    async def call(self, request: ChatRequest, *, item_id: str, stage: str) -> Outcome:
        """One teacher call for `item_id` at `stage`; see the module docstring.

        Raises:
            BudgetExhausted: a cap is reached and the answer is not in the journal.
            TeacherUnavailable: the teacher refused for a reason no retry can fix.
            JournalStorageError: the answer could not be journaled.
        """
        run = self.run
        key = b""
        if run is not None:
            key = request_key(self.provider, request)
            if run.may_hit and (hit := await run.lookup_call(key)) is not None:
                self.journal_hits += 1
                return hit.to_outcome()
        reason = self.budget.exceeded(self._totals)
        if reason is not None:
            raise BudgetExhausted(reason)
        outcome = await self._send(request)
        if outcome.kind in _STOPS_THE_RUN:
            raise TeacherUnavailable(f"teacher refused the call ({outcome.kind}): {outcome.error}")
        if outcome.kind is OutcomeKind.INVALID_REQUEST and outcome.status == 404:
            # No other item can get past an unknown model or a wrong URL path either.
            raise TeacherUnavailable(
                f"the teacher answered 404 for model {request.model!r} ({outcome.error}): "
                "fix --model, or --base-url (OpenAI-compatible servers need the /v1 suffix)"
            )
        if not outcome.kind.is_success:
            return outcome
        cost = self._price(request.model, outcome.usage)
        if cost is None:
            self.unpriced_models.add(request.model)
            cost = 0.0
        if run is not None:
            await run.record_call(
                key,
                outcome,
                provider=str(self.provider),
                model=request.model,
                cost_usd=cost,
                item_id=item_id,
                stage=stage,
            )
        else:
            self._totals.add(outcome.usage.input_tokens, outcome.usage.output_tokens, cost)
        return outcome
