"""`amr-async db` commands end to end, in-process."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from amr_async.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_search_export_import_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "geometry.py").write_text(
        "def circle_area(radius):\n    '''Area of a circle.'''\n"
        "    return 3.14159 * radius ** 2\n\n"
        "class Shape:\n    def perimeter_of_square(self, side):\n        return 4 * side\n"
    )
    (src / "text.py").write_text(
        "def count_words(text):\n    return len(text.split())\n\n"
        "def word_count(s):\n    return len(s.split())\n"  # same AST as count_words
    )
    (src / "broken.py").write_text("def nope(:\n")
    db = str(tmp_path / "db")
    code, out, err = run(capsys, "db", "--db", db, "seed", str(src))
    assert code == 0
    summary = orjson.loads(out.splitlines()[-1])
    assert summary == {
        "files_skipped": 1,
        "functions": 4,
        "added": 3,
        "rejected": {"duplicate_ast": 1},
    }
    assert "broken.py: line 1" in err

    code, out, _ = run(capsys, "db", "--db", db, "search", "area of a circle", "-k", "1", "--json")
    assert code == 0
    hit = orjson.loads(out)
    assert hit["name"] == "circle_area"
    assert hit["stage"] == "seed"
    assert hit["item_id"].endswith("geometry.py")

    code, out, _ = run(capsys, "db", "--db", db, "export", str(tmp_path / "m.jsonl"))
    assert orjson.loads(out)["exported"] == 3
    assert all(
        "vector" in orjson.loads(x) for x in (tmp_path / "m.jsonl").read_bytes().splitlines()
    )
    code, out, _ = run(
        capsys, "db", "--db", db, "export", "--no-vectors", str(tmp_path / "bare.jsonl")
    )
    assert orjson.loads(out) == {
        "exported": 3,
        "file": str(tmp_path / "bare.jsonl"),
        "vectors": False,
    }
    assert all(
        "vector" not in orjson.loads(x) for x in (tmp_path / "bare.jsonl").read_bytes().splitlines()
    )
    code, out, _ = run(
        capsys, "db", "--db", str(tmp_path / "db2"), "import", str(tmp_path / "m.jsonl")
    )
    assert orjson.loads(out) == {"bad_lines": 0, "added": 3, "rejected": {}}

    code, out, _ = run(capsys, "db", "--db", str(tmp_path / "db2"), "stats")
    stats = orjson.loads(out)
    assert stats["modules"] == 3
    assert stats["embedder"] == "hash"
    assert stats["dim"] == 384
    assert stats["index"] == "auto:exact"
    assert stats["by_verdict"] == {"unverified": 3}


def test_errors_are_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "db", "--db", str(tmp_path / "db"), "seed", str(tmp_path / "missing")
    )
    assert code == 1
    assert "not a directory" in err
    code, out, err = run(capsys, "db", "--db", str(tmp_path / "db"), "search", "anything")
    assert code == 0
    assert out == ""
    assert "no results" in err
