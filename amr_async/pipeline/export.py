"""Exports of a run's output JSONL to fine-tuning formats: OpenAI chat, Alpaca, ShareGPT.

One output record (`amr-async run`) becomes one training example:

``openai``    ``{"messages": [{"role": "system", ...}?, {"role": "user", "content": I},
              {"role": "assistant", "content": R}]}`` (OpenAI chat fine-tuning JSONL)
``alpaca``    ``{"instruction": I, "input": "", "output": R}``
``sharegpt``  ``{"id": ID, "conversations": [{"from": "system", ...}?,
              {"from": "human", "value": I}, {"from": "gpt", "value": R}]}``

Records are streamed (memory does not grow with the file). Which records are exported:
those with a non-empty response whose verdict is ``ok``; ``--include-truncated`` adds
truncated ones; ``--require-final-check`` keeps only records whose optional final check
passed. A line that is not a record (bad JSON, missing field) is reported with its file and
line number and skipped; the export goes on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson


class ExportFormat(enum.StrEnum):
    """The training-data formats `export` writes."""

    OPENAI = "openai"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"


@dataclass(slots=True, frozen=True)
class ExportOptions:
    """Which records are exported and how.

    Attributes:
        system: a system message put in every example (openai, sharegpt); None = none.
        include_truncated: export records whose response was cut at max_tokens.
        require_final_check: export only records whose final check passed.
        json_array: write one JSON array instead of JSONL (some trainers want Alpaca and
            ShareGPT that way); still streamed.
    """

    system: str | None = None
    include_truncated: bool = False
    require_final_check: bool = False
    json_array: bool = False


@dataclass(slots=True)
class ExportReport:
    """What an export wrote and what it left out, with the reasons."""

    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # "file:line: reason" per bad line

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _openai(record: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    messages = [{"role": "system", "content": options.system}] if options.system else []
    messages += [
        {"role": "user", "content": record["instruction"]},
        {"role": "assistant", "content": record["response"]},
    ]
    return {"messages": messages}


def _alpaca(record: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    return {"instruction": record["instruction"], "input": "", "output": record["response"]}


def _sharegpt(record: dict[str, Any], options: ExportOptions) -> dict[str, Any]:
    turns = [{"from": "system", "value": options.system}] if options.system else []
    turns += [
        {"from": "human", "value": record["instruction"]},
        {"from": "gpt", "value": record["response"]},
    ]
    return {"id": str(record["id"]), "conversations": turns}


_CONVERT: dict[ExportFormat, Callable[[dict[str, Any], ExportOptions], dict[str, Any]]] = {
    ExportFormat.OPENAI: _openai,
    ExportFormat.ALPACA: _alpaca,
    ExportFormat.SHAREGPT: _sharegpt,
}


def _records(path: Path, report: ExportReport) -> Iterator[dict[str, Any]]:
    """The records of a run's output, bad lines reported (file:line) and skipped."""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                report.errors.append(f"{path}:{line_no}: not valid JSON: {exc}")
                report.skip("bad_line")
                continue
            if not isinstance(row, dict):
                report.errors.append(f"{path}:{line_no}: expected a JSON object")
                report.skip("bad_line")
                continue
            bad = _bad_field(row)
            if bad is not None:
                report.errors.append(f"{path}:{line_no}: field '{bad}' missing or of wrong type")
                report.skip("bad_line")
                continue
            yield row


def _bad_field(row: dict[str, Any]) -> str | None:
    """The first required field that is missing or of the wrong type, if any."""
    if isinstance(row.get("id"), bool) or not isinstance(row.get("id"), str | int):
        return "id"
    for key in ("instruction", "response"):
        if not isinstance(row.get(key), str):
            return key
    return None


def _reason_to_skip(record: dict[str, Any], options: ExportOptions) -> str | None:
    verdict = record.get("verdict", "ok")
    if verdict == "truncated" and not options.include_truncated:
        return "truncated"
    if verdict not in ("ok", "truncated"):
        return f"verdict_{verdict}"
    if not record["response"].strip():
        return "empty_response"
    if options.require_final_check:
        check = record.get("final_check")
        if not isinstance(check, dict) or check.get("passed") is not True:
            return "final_check_not_passed"
    return None


def export_records(
    source: Path, target: Path, fmt: ExportFormat, options: ExportOptions | None = None
) -> ExportReport:
    """Convert a run's output JSONL into a training file (blocking file I/O).

    Args:
        source: the run's output JSONL.
        target: the file to write (replaced).
        fmt: the training format.
        options: filters and layout.

    Returns:
        Counts written and skipped by reason, and one message per bad line.
    """
    options = options or ExportOptions()
    convert = _CONVERT[fmt]
    report = ExportReport()
    with target.open("wb") as out:
        _write_all(out, source, convert, options, report)
    return report


def _write_all(
    out: BinaryIO,
    source: Path,
    convert: Callable[[dict[str, Any], ExportOptions], dict[str, Any]],
    options: ExportOptions,
    report: ExportReport,
) -> None:
    if options.json_array:
        out.write(b"[")
    for record in _records(source, report):
        reason = _reason_to_skip(record, options)
        if reason is not None:
            report.skip(reason)
            continue
        if options.json_array:
            out.write(b"\n" if report.written == 0 else b",\n")
            out.write(orjson.dumps(convert(record, options)))
        else:
            out.write(orjson.dumps(convert(record, options)) + b"\n")
        report.written += 1
    if options.json_array:
        out.write(b"\n]\n")


__all__ = ["ExportFormat", "ExportOptions", "ExportReport", "export_records"]
