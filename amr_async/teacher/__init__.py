"""Teacher wire clients: one per provider protocol, all returning `Outcome`s."""

from amr_async.teacher.types import (
    ChatRequest,
    Message,
    Outcome,
    OutcomeKind,
    Provider,
    RateLimitInfo,
    Usage,
)

__all__ = ["ChatRequest", "Message", "Outcome", "OutcomeKind", "Provider", "RateLimitInfo", "Usage"]
