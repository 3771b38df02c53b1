"""The closed outcome set and its retry policy."""

from amr_async.teacher import OutcomeKind


def test_money_wasting_classes_are_not_retryable() -> None:
    never = {
        OutcomeKind.AUTH,
        OutcomeKind.QUOTA_EXHAUSTED,
        OutcomeKind.INVALID_REQUEST,
        OutcomeKind.TRUNCATED,
        OutcomeKind.OK,
    }
    assert {k for k in OutcomeKind if not k.retryable} == never


def test_success_means_paid_for() -> None:
    assert {k for k in OutcomeKind if k.is_success} == {OutcomeKind.OK, OutcomeKind.TRUNCATED}
