"""`amr-async export`: a run's output as OpenAI chat fine-tuning, Alpaca and ShareGPT data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from amr_async.cli import main


def _record(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "instruction": f"Write `f{i}(x)`.",
        "response": f"Here.\n\n```python\ndef f{i}(x):\n    return x + {i}\n```\n",
        "strategy": "amr-evol",
        "verdict": "ok",
        **extra,
    }


@pytest.fixture
def run_output(tmp_path: Path) -> Path:
    rows = [
        orjson.dumps(_record(0)),
        orjson.dumps(_record(1, verdict="truncated")),
        b"{not json",
        orjson.dumps(_record(2, final_check={"passed": True, "tests": 3})),
        orjson.dumps({"id": "t3", "instruction": "x"}),  # no response
        orjson.dumps(_record(4, final_check={"passed": False, "tests": 3})),
        b"",
        orjson.dumps(_record(5, id=5)),  # integer ids are valid input ids
    ]
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_openai_chat_format(
    tmp_path: Path, run_output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "train.jsonl"
    rc = main(["export", str(run_output), str(target), "--system", "You are a coder."])
    assert rc == 3  # two bad lines, named on stderr
    out, err = capsys.readouterr()
    assert f"{run_output}:3: not valid JSON" in err
    assert f"{run_output}:5: field 'response'" in err
    summary = orjson.loads(out.splitlines()[-1])
    assert summary["written"] == 4
    assert summary["skipped"] == {"bad_line": 2, "truncated": 1}
    examples = _lines(target)
    assert len(examples) == 4
    for example in examples:
        # What OpenAI's fine-tuning format check requires: only `messages`, each message
        # a role from system/user/assistant with string content, ending with the answer.
        assert set(example) == {"messages"}
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in example["messages"])
        assert all(isinstance(m["content"], str) and m["content"] for m in example["messages"])
    assert examples[0]["messages"][1]["content"] == _record(0)["instruction"]
    assert examples[0]["messages"][2]["content"] == _record(0)["response"]


def test_alpaca_and_sharegpt_with_filters(tmp_path: Path, run_output: Path) -> None:
    alpaca = tmp_path / "alpaca.json"
    rc = main(
        ["export", str(run_output), str(alpaca), "--format", "alpaca", "--json-array",
         "--include-truncated", "--require-final-check"]
    )  # fmt: skip
    assert rc == 3
    rows = orjson.loads(alpaca.read_bytes())  # one JSON array
    assert rows == [
        {"instruction": "Write `f2(x)`.", "input": "", "output": _record(2)["response"]}
    ]
    share = tmp_path / "share.jsonl"
    assert main(["export", str(run_output), str(share), "--format", "sharegpt"]) == 3
    convs = _lines(share)
    assert [c["id"] for c in convs] == ["t0", "t2", "t4", "5"]
    for c in convs:
        assert [t["from"] for t in c["conversations"]] == ["human", "gpt"]
        assert all(isinstance(t["value"], str) for t in c["conversations"])
    assert convs[0]["conversations"][1]["value"] == _record(0)["response"]


def test_empty_array_and_missing_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    target = tmp_path / "a.json"
    assert main(["export", str(empty), str(target), "--json-array"]) == 0
    assert orjson.loads(target.read_bytes()) == []
    assert main(["export", str(tmp_path / "nope.jsonl"), str(target)]) == 2
