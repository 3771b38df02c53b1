"""The public names of teacher/ and emulator/ (others build on them: keep them stable)."""

from __future__ import annotations

import resource

import amr_async.emulator as emulator
import amr_async.teacher as teacher
from amr_async.teacher import raise_nofile_limit


def test_teacher_exports() -> None:
    assert sorted(teacher.__all__) == sorted(
        [
            "AnthropicClient",
            "ChatRequest",
            "ClientConfig",
            "Message",
            "OpenAIClient",
            "Outcome",
            "OutcomeKind",
            "Provider",
            "RateLimitInfo",
            "Secret",
            "TeacherClient",
            "Timeouts",
            "Usage",
            "make_client",
            "open_session",
            "raise_nofile_limit",
        ]
    )
    for name in teacher.__all__:
        assert getattr(teacher, name) is not None


def test_emulator_exports() -> None:
    assert sorted(emulator.__all__) == sorted(
        [
            "KINDS",
            "Bank",
            "BankError",
            "Emulator",
            "EmulatorConfig",
            "FaultRates",
            "LatencyModel",
            "Limits",
            "RunningEmulator",
            "ScriptedTeacher",
            "Task",
            "body_hash",
            "estimate_tokens",
            "serve",
        ]
    )
    for name in emulator.__all__:
        assert getattr(emulator, name) is not None


def test_secret_never_shows() -> None:
    key = teacher.Secret("sk-live-abcdef")
    assert "abcdef" not in repr(key)
    assert "abcdef" not in str(key)
    assert "abcdef" not in f"{key}"
    assert key.reveal() == "sk-live-abcdef"


def test_nofile_limit_is_raised_but_never_lowered() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        assert raise_nofile_limit(10) >= soft  # never lowered
        want = min(soft + 100, hard) if hard != resource.RLIM_INFINITY else soft + 100
        got = raise_nofile_limit(want)
        assert got >= min(want + 256, hard if hard != resource.RLIM_INFINITY else want + 256)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
