"""Exceptions of the scheduler.

    SchedulerError
    ├── DispatcherClosed     submit after shutdown began, or a waiting call released by it
    │   └── Abandoned        an in-flight call given up when the shutdown grace period ended
    └── UnknownEndpoint      submit named an endpoint the dispatcher does not have

Failures of the calls themselves are never raised: they are `Outcome`s.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of the scheduler's exceptions."""


class DispatcherClosed(SchedulerError, RuntimeError):
    """The dispatcher is shutting down: the call was not (or not completely) made.

    The caller records nothing for it, so a resumed run makes the call again.
    """


class Abandoned(DispatcherClosed):
    """The call was on the wire when the shutdown grace period ended; its answer is lost."""


class UnknownEndpoint(SchedulerError, KeyError):
    """`submit(endpoint=...)` named no configured endpoint."""
