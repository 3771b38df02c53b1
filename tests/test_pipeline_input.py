"""Input validation: every bad line becomes a reject naming its line and reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from amr_async.pipeline import InputItem, InputReader, Reject, parse_line


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"id": "a"}', "field 'instruction': missing"),
        (b'{"instruction": 3}', "field 'instruction': expected a string, got int"),
        (b'{"instruction": "  "}', "field 'instruction': empty"),
        (b'{"instruction": "x", "id": true}', "field 'id': expected a string or integer"),
        (b'{"instruction": "x", "id": [1]}', "field 'id': expected a string or integer"),
        (b'{"instruction": "x", "id": ""}', "field 'id': empty"),
    ],
)
def test_bad_lines_are_rejected_with_reason(raw: bytes, reason: str) -> None:
    result = parse_line(raw, 7)
    assert isinstance(result, Reject)
    assert result.line_no == 7
    assert reason in result.reason


def test_ids_given_or_generated_from_line_content() -> None:
    assert parse_line(b'{"id": 12, "instruction": "x"}', 1) == InputItem("12", 1, "x")
    raw = b'{"instruction": "write f"}'
    generated = parse_line(raw + b"\n", 4)
    assert isinstance(generated, InputItem)
    assert generated.item_id == "sha256:" + hashlib.sha256(raw).hexdigest()[:16]
    assert parse_line(b"   \n", 5) is None


def test_reader_streams_batches_rejects_long_lines_and_writes_rejects(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = [orjson.dumps({"id": i, "instruction": f"task {i}"}) for i in range(5)]
    lines.insert(2, orjson.dumps({"id": "big", "instruction": "x" * 5000}))
    src.write_bytes(b"\n".join(lines) + b"\n")
    reader = InputReader(src, tmp_path / "rejects.jsonl", max_line_bytes=1000)
    first = reader.read_batch(4)
    rest = reader.read_batch(100)
    assert reader.read_batch(100) == []
    assert len(first) == 4
    got = first + rest
    rejects = [r for r in got if isinstance(r, Reject)]
    assert [r.line_no for r in rejects] == [3]
    assert "over the 1000-byte cap" in rejects[0].reason
    assert [i.item_id for i in got if isinstance(i, InputItem)] == ["0", "1", "2", "3", "4"]
    reader.write_rejects(rejects)
    reader.close()
    written = [orjson.loads(x) for x in (tmp_path / "rejects.jsonl").read_bytes().splitlines()]
    assert written == [{"file": str(src), "line": 3, "reason": rejects[0].reason}]


def test_journaled_config_has_no_url_password() -> None:
    from amr_async.cli import build_parser
    from amr_async.pipeline.cli import _settings

    args = build_parser().parse_args(
        ["run", "--journal", "j.db", "--base-url", "http://bob:hunter2@127.0.0.1:9/v1"]
    )
    cfg = _settings(args, None)
    assert cfg["base_url"] == "http://127.0.0.1:9/v1"
    assert "hunter2" not in orjson.dumps(cfg).decode()
