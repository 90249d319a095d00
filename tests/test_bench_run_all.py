"""bench/run_all.py: collects each script's table, names the machine and command, reports failures."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_and_readme_block(tmp_path, monkeypatch):
    run_all = _load()
    ok = tmp_path / "ok_bench.py"
    ok.write_text("import sys\nprint('noise')\nprint('| a | b |')\nprint('|---|---|')\nprint('| 1 | 2.0x |')\n")
    bad = tmp_path / "bad_bench.py"
    bad.write_text("raise SystemExit('boom')\n")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "__file__", str(tmp_path / "run_all.py"))
    results = [run_all.run_script(p, quick=True, timeout=60) for p in run_all.scripts()]
    assert [r["name"] for r in results] == ["bad_bench", "ok_bench"]
    assert results[0]["code"] == 1 and "boom" in "\n".join(results[0]["tail"])
    assert results[1]["code"] == 0 and results[1]["table"] == "| a | b |\n|---|---|\n| 1 | 2.0x |"
    text = run_all.render(results, quick=True, command="python bench/run_all.py --quick")
    assert "FAILED (exit 1)" in text and "| 1 | 2.0x |" in text and "cores" in text and "torch" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run_all.START}\nold\n{run_all.END}\noutro\n")
    run_all.update_readme(text, readme)
    new = readme.read_text()
    assert "old" not in new and "| 1 | 2.0x |" in new and new.startswith("intro\n") and new.endswith("outro\n")


def test_every_bench_script_accepts_quick():
    # The old check, ``"--quick" in path.read_text()``, could not fail: every script names --quick in its
    # docstring's usage lines, so deleting its ``add_argument("--quick", ...)`` left the text check green
    # while ``run_all.py --quick`` (CI) would die on "unrecognized arguments". Ask each script's own
    # argparse instead: ``--help`` prints the usage line argparse builds from the options it really has, and
    # a flag that takes no value (what run_all passes) shows there as ``[--quick]`` (``[--quick QUICK]`` if
    # it wanted a value). --help exits before any benchmark work (about 9 s of CPU for all of them, run in parallel).
    run_all = _load()
    scripts = run_all.scripts()
    assert scripts, "no bench scripts found"
    procs = {path.name: subprocess.Popen([sys.executable, str(path), "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True) for path in scripts}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} --help failed:\n{out}"
        usage = out.split("\n\n")[0]  # "usage: name.py [-h] [--quick] ..." up to the first blank line
        assert usage.startswith("usage:"), f"{name}: {out[:200]!r}"
        assert re.search(r"\[--quick\]", usage), f"{name} must accept the flag --quick (run_all passes it):\n{usage}"


def test_tables_keep_each_table_whole_and_apart():
    run_all = _load()
    out = "## title\n\n| a |\n|---|\n| 1 |\nratio line\n\n| r | v |\n|---|---|\n| x | 2x |\n"
    assert run_all.tables(out) == "| a |\n|---|\n| 1 |\n\n| r | v |\n|---|---|\n| x | 2x |"
    assert run_all.tables("no tables here\n") == ""
