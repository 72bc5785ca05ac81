"""``recfl bench``: figures with in-run references, JSON, and the README section it maintains."""

from __future__ import annotations

import json

from recfl.app.cli import main
from tools.bench.cli import END, START


def test_bench_writes_json_and_replaces_only_the_marked_readme_section(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--only", "ab_harness", "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text())
    assert report["command"] == "recfl bench --quick --only ab_harness" and report["machine"]["cores"] >= 1
    figures = report["figures"]
    assert figures and all(f["benchmark"] == "ab_harness" and f["value"] > 0 for f in figures)
    assert all(f["ratio"] == f["value"] / f["reference_value"] for f in figures if f["reference_value"])
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    assert "`recfl bench --quick --only ab_harness` on " in text and "| ab_harness | paired evaluation" in text
    assert "| ab_harness |" in capsys.readouterr().out
    readme.write_text(f"{START}\n{END}\n")
    assert main(["bench", "--render", str(out), "--readme", str(readme)]) == 0  # measures nothing
    assert readme.read_text().split(START)[1].split(END)[0] == text.split(START)[1].split(END)[0]


def test_bench_refuses_unknown_names_and_a_readme_without_markers(tmp_path, capsys):
    assert main(["bench", "--only", "nope"]) == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err
    (tmp_path / "R.md").write_text("no markers\n")
    assert main(["bench", "--quick", "--only", "ab_harness", "--readme", str(tmp_path / "R.md"), "--out", str(tmp_path / "b.json")]) == 2
    assert "needs one '<!-- recfl bench: start -->' line" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1]")
    assert main(["bench", "--render", str(tmp_path / "bad.json")]) == 2
    assert "not a `recfl bench` JSON report" in capsys.readouterr().err
