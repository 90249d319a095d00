"""``triplay compare``: planning, the seeds-pooled report, per-cell resume, the shipped comparisons, end to end.

The report tests write ``metrics.jsonl`` files by hand (no training) with values whose pooled rates and
bootstrap bounds can be worked out on paper: with two seeds a resample holds seed 0 twice, seed 1 twice (a
quarter of the draws each) or both, so the 2.5% and 97.5% quantiles are the two one-seed values exactly.
The end-to-end test trains the tiny preset: 2 variants x 2 seeds, one iteration, 2 jobs at once, one thread
each (about 50 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training import compare
from training.cli import build_parser, main
from training.compare import Comparison, Variant
from training.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHIPPED = ("grpo_variants", "opponents", "reward_schemes", "verdict_source")
"""the comparisons this feature ships (others may join them)"""
TWO = Comparison(name="t", preset="tiny", sets=("loop.iterations=1",), seeds=(0, 1),
                 variants={"a": Variant(("grpo.loss_type=grpo",)), "b": Variant(("grpo.loss_type=dapo",))})
"""a and b, seeds 0 and 1, one iteration: the synthetic comparison"""


def heldout(iteration: int, **metrics) -> dict:
    """A held-out record: ``name=(value, n)`` for a rate (with ``heldout/n_<name>``), ``name=value`` for a return."""
    record = {"iteration": iteration, "phase": "heldout", "step": 0}
    for name, x in metrics.items():
        value, n = x if isinstance(x, tuple) else (x, None)
        record[f"heldout/{name}"] = value
        if n is not None:
            record[f"heldout/n_{name}"] = float(n)
    return record


def write_cell(out: Path, variant: str, seed: int, *records: dict, finished: bool = True) -> Path:
    cell = out / variant / f"seed{seed}"
    cell.mkdir(parents=True)
    training = {"iteration": 1, "phase": "red", "step": 0, "red/reward_attacker": 0.5}
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (records[0], training, *records[1:])))
    (cell / "train.log").write_text("the earlier run's log\n")
    if finished:
        (cell / "report.md").write_text("# report\n")
    return cell


FINAL = {  # (variant, seed) -> attack success (value, games); unsafe, guidance, refusal (of 4 games); defender, attacker returns
    ("a", 0): ((0.5, 2), 0.0, 0.0, 1.0, 0.2, 0.0),
    ("a", 1): ((0.25, 8), 0.25, 0.25, 0.0, 0.4, 0.1),
    ("b", 0): ((0.5, 2), 0.75, 0.75, 0.0, 0.2, 0.9),
    ("b", 1): ((0.5, 2), 1.0, 1.0, 1.0, 0.2, 1.0),
}
SEEDS = {cell: (heldout(0, guidance_rate=(0.0, 4)),
                heldout(1, attack_success_rate=asr, unsafe_rate=(unsafe, 4), guidance_rate=(guidance, 4),
                        refusal_rate=(refusal, 4), reward_defender=defender, reward_attacker=attacker))
         for cell, (asr, unsafe, guidance, refusal, defender, attacker) in FINAL.items()}
"""(variant, seed) -> its held-out records at iterations 0 and 1"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    for (variant, seed), records in SEEDS.items():
        write_cell(out, variant, seed, *records)
    return out, compare.write_report(TWO, out, compare.plan(TWO, out), command="triplay compare ...", jobs=2)


def test_rates_pool_the_games_of_every_seed(report):
    _, result = report
    asr = result["metrics"]["heldout/attack_success_rate"]["variants"]["a"]["final"]
    # seed 0: 1 of 2 games, seed 1: 2 of 8 games -> 3 of 10 (the mean of the seeds' rates would be 0.375)
    assert asr["value"] == pytest.approx(0.3) and asr["n"] == 10 and asr["seeds"] == 2
    assert asr["per_seed"] == {"0": 0.5, "1": 0.25}
    # resampled seeds: {0, 0} -> 2/4, {1, 1} -> 4/16, {0, 1} -> 3/10
    assert (asr["low"], asr["high"]) == (pytest.approx(0.25), pytest.approx(0.5))
    reward = result["metrics"]["heldout/reward_defender"]["variants"]["a"]["final"]
    assert reward["value"] == pytest.approx(0.3) and (reward["low"], reward["high"]) == (pytest.approx(0.2), pytest.approx(0.4))


@pytest.mark.parametrize("key, reading", [
    ("heldout/unsafe_rate", "worse"),       # b 7/8 vs a 1/8: every resample's difference lies in [0.5, 1]; lower is better
    ("heldout/guidance_rate", "improved"),  # the same numbers, higher is better
    ("heldout/reward_attacker", "higher"),  # b 0.95 vs a 0.05, no better direction
    ("heldout/refusal_rate", "within noise"),  # a seeds 1 and 0, b seeds 0 and 1: resamples reach -1 and +1
])
def test_each_variant_is_read_against_the_baseline(report, key, reading):
    _, result = report
    vs = result["metrics"][key]["variants"]["b"]["vs_baseline"]
    assert vs["reading"] == reading
    if reading == "within noise":
        assert vs["diff"] == pytest.approx(0.0) and vs["low"] == pytest.approx(-1.0) and vs["high"] == pytest.approx(1.0)
    else:
        assert 0 < vs["low"] <= vs["diff"] <= vs["high"]
    assert result["metrics"][key]["variants"]["a"]["vs_baseline"] is None  # a is the baseline
    unsafe = result["metrics"]["heldout/unsafe_rate"]["variants"]["b"]["vs_baseline"]
    assert unsafe["diff"] == pytest.approx(0.75) and unsafe["low"] >= 0.5 - 1e-9 and unsafe["high"] <= 1.0 + 1e-9


def test_first_to_last_change_pools_the_seeds(report):
    _, result = report
    change = result["metrics"]["heldout/guidance_rate"]["variants"]["b"]["change"]
    # iteration 0: 0 of 8; final: 7 of 8; resamples of the final seeds give 6/8, 7/8 or 8/8
    assert change["first"] == 0.0 and change["diff"] == pytest.approx(0.875) and change["reading"] == "improved"
    assert (change["low"], change["high"]) == (pytest.approx(0.75), pytest.approx(1.0))
    points = result["metrics"]["heldout/guidance_rate"]["variants"]["b"]["iterations"]
    assert [(p["iteration"], p["value"]) for p in points] == [(0, 0.0), (1, pytest.approx(0.875))]


def test_report_files(report):
    out, result = report
    md = (out / "comparison.md").read_text()
    assert "| a (baseline) | 0.300 [0.250, 0.500] (n=10, seeds=2) | s0 0.500, s1 0.250 |" in md
    assert "reproduce: `triplay compare ...`" in md and "- jobs: 2" in md
    assert json.loads((out / "comparison.json").read_text()) == result
    stems = {key.split("/")[1] for key in compare.METRICS}
    assert {p.stem for p in (out / "plots").glob("*.png")} == stems
    assert all(f"](plots/{stem}.png)" in md for stem in stems)


def test_missing_and_one_seed_cells_are_marked(tmp_path):
    for (variant, seed), records in SEEDS.items():
        if (variant, seed) != ("b", 1):
            write_cell(tmp_path, variant, seed, *records)
    failed = write_cell(tmp_path, "b", 1, SEEDS["b", 1][0], finished=False)  # died after iteration 0
    (failed / compare.CELL_FILE).write_text(json.dumps({"wall_s": 3.0, "exit_code": 1, "jobs": 1}))
    result = compare.write_report(TWO, tmp_path, compare.plan(TWO, tmp_path))
    assert result["missing"] == ["b/seed1"]
    md = (tmp_path / "comparison.md").read_text()
    assert "| b | 1 | **missing**: failed (exit 1) | 3.0 s | 1 |" in md and "1 cell(s) missing** (b/seed1)" in md
    b = result["metrics"]["heldout/unsafe_rate"]["variants"]["b"]
    assert b["final"]["value"] == 0.75 and b["final"]["seeds"] == 1 and b["final"]["low"] is None
    assert b["vs_baseline"]["reading"] == "n/a" and b["vs_baseline"]["diff"] == pytest.approx(0.75 - 0.125)
    assert "| b | 0.750 [n/a] (n=4, seeds=1) |" in md


# ---------------------------------------------------------------------------------------------- planning


def test_cells_and_run_dirs(tmp_path):
    cells = compare.plan(TWO, tmp_path)
    assert [c.label for c in cells] == ["a/seed0", "a/seed1", "b/seed0", "b/seed1"]
    assert [c.run_dir for c in cells] == [tmp_path / v / f"seed{s}" for v in "ab" for s in (0, 1)]
    assert cells[3].argv == ["train", "--preset", "tiny", "--set", "loop.iterations=1", "--set", "grpo.loss_type=dapo",
                             "--set", f'loop.runs_dir="{tmp_path / "b"}"', "--set", "loop.run_name=seed1",
                             "--set", "loop.seed=1", "--set", "loop.progress=false"]
    assert all(c.final_iteration == 1 and c.state() == "fresh" for c in cells)


@pytest.mark.parametrize("spec, name, sets", [
    ("dapo:grpo.loss_type=dapo,grpo.eps_high=0.28", "dapo", ("grpo.loss_type=dapo", "grpo.eps_high=0.28")),
    ("two:loop.phases=red,blue, grpo.lr=1e-3", "two", ("loop.phases=red,blue", "grpo.lr=1e-3")),
    ("p:judges.panel=[{name: content, embedder: lexical}]", "p", ("judges.panel=[{name: content, embedder: lexical}]",)),
    ("plain", "plain", ()),
])
def test_variant_syntax(spec, name, sets):
    assert compare.parse_variant(spec) == (name, Variant(sets))


def test_variant_config_file_and_seeds_syntax(tmp_path):
    assert compare.parse_variant(f"c:config={tmp_path / 'x.yaml'},grpo.lr=1") == ("c", Variant(("grpo.lr=1",), str(tmp_path / "x.yaml")))
    assert compare.parse_seeds("3") == (0, 1, 2) and compare.parse_seeds(2) == (0, 1)
    assert compare.parse_seeds("0,4,7") == (0, 4, 7) and compare.parse_seeds([5]) == (5,)
    with pytest.raises(ValueError, match="seeds must be a count"):
        compare.parse_seeds("0")


def test_two_config_files_merge_as_applied_in_turn(tmp_path):
    base, own = tmp_path / "base.yaml", tmp_path / "own.yaml"
    base.write_text("grpo: {lr: 0.002, beta: 0.01}\nloop: {iterations: 1}\n")
    own.write_text("grpo: {lr: 0.003}\n")
    c = Comparison(name="m", preset="tiny", config=str(base), seeds=(0,), variants={"v": Variant((), str(own))})
    (cell,) = compare.plan(c, tmp_path / "out")
    assert cell.merged_config == {"grpo": {"lr": 0.003, "beta": 0.01}, "loop": {"iterations": 1}}
    assert cell.argv[3:5] == ["--config", str(tmp_path / "out" / "v" / "config.yaml")] and cell.final_iteration == 1


def test_a_bad_variant_is_named_before_anything_runs(tmp_path, capsys, no_model_loads):
    out = tmp_path / "out"
    argv = ["compare", "--preset", "tiny", "--variant", "ok", "--variant", "bad:grpo.lr=-1", "--out", str(out)]
    assert main(argv) == 2
    assert "triplay compare: error: variant 'bad': grpo.lr must be > 0, got -1.0" in capsys.readouterr().err
    assert not out.exists()
    assert main(["compare", "--preset", "tiny", "--variant", "a", "--set", "loop.seed=3", "--out", str(out)]) == 2
    assert "sets loop.seed, which the comparison sets per cell" in capsys.readouterr().err
    assert main(["compare", "--preset", "tiny", "--variant", "a", "--set", "grpo.lrr=1", "--out", str(out)]) == 2
    assert "error: the common overrides: --set 'grpo.lrr=1': unknown config field 'grpo.lrr'" in capsys.readouterr().err


def test_unknown_comparison_lists_the_shipped_ones(capsys):
    assert main(["compare", "--comparison", "grpo_variantz"]) == 2
    err = capsys.readouterr().err
    assert "unknown comparison 'grpo_variantz'" in err and all(name in err for name in SHIPPED)


def test_list(capsys):
    assert main(["compare", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert set(SHIPPED) <= {line.split(":")[0] for line in lines if not line.startswith(" ")}
    assert "grpo_variants: grpo (baseline), dr_grpo, dapo, rloo; preset demo, seeds 0,1,2" in lines


def test_the_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\npreset: tiny\nseeds: 3\nset: [loop.iterations=2]\n"
                    "variants: {x: {set: [grpo.lr=0.002]}, y: {set: [grpo.lr=0.003]}}\n")
    args = compare_args(comparison=str(path), seeds="2", sets=["loop.iterations=1"], baseline="y")
    c = compare.from_args(args)
    assert (c.name, c.preset, c.seeds, c.baseline, c.sets) == ("mine", "tiny", (0, 1), "y", ("loop.iterations=2", "loop.iterations=1"))
    assert {cell.final_iteration for cell in compare.plan(c, tmp_path)} == {1}
    assert compare.command_line(args, tmp_path / "o") == (f"triplay compare --comparison {path} --baseline y --seeds 2 "
                                                          f"--set loop.iterations=1 --out {tmp_path / 'o'} --jobs 1")


def compare_args(**given):
    args = {"comparison": None, "variants": [], "preset": None, "config": None, "sets": [], "baseline": None,
            "seeds": None, "name": None, "jobs": 1}
    return type("Args", (), {**args, **given})()


def test_cores_are_split_into_disjoint_slices():
    assert compare.core_slices(1, [5, 7]) == [[5, 7]]
    assert compare.core_slices(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
    assert compare.core_slices(3, [0, 1]) == [[0], [1], [0]]  # more jobs than cores: they share


# ---------------------------------------------------------------------------------------------- resume


def test_cell_states(tmp_path):
    write_cell(tmp_path, "a", 0, *SEEDS["a", 0])                           # finished
    write_cell(tmp_path, "a", 1, SEEDS["a", 1][0], finished=False)         # a checkpoint after iteration 0 ...
    (tmp_path / "a" / "seed1" / "checkpoint").mkdir()
    (tmp_path / "a" / "seed1" / "checkpoint" / "state.pt").write_bytes(b"")
    write_cell(tmp_path, "b", 0, SEEDS["b", 0][0])                         # report.md but not the final iteration
    assert [c.state() for c in compare.plan(TWO, tmp_path)] == ["finished", "resume", "fresh", "fresh"]


def test_a_repeated_command_reruns_no_finished_cell(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--preset", "tiny", "--variant", "a:grpo.loss_type=grpo", "--variant", "b:grpo.loss_type=dapo",
            "--seeds", "2", "--set", "loop.iterations=1", "--out", str(out)]
    out.mkdir()  # as an earlier call left it: every cell finished
    (out / "comparison.yaml").write_text(yaml.safe_dump(compare.from_args(build_parser().parse_args(argv)).to_dict()))
    cells = [write_cell(out, v, s, *SEEDS[v, s]) for v, s in SEEDS]
    before = [(c / "train.log").read_bytes() + (c / "metrics.jsonl").read_bytes() for c in cells]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 cells (4 finished, 0 to resume, 0 to start)" in printed and "] start" not in printed
    assert [(c / "train.log").read_bytes() + (c / "metrics.jsonl").read_bytes() for c in cells] == before
    assert (out / "comparison.md").is_file()


def test_report_only_runs_no_cell_and_marks_the_unfinished_ones(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--preset", "tiny", "--variant", "a:grpo.loss_type=grpo", "--variant", "b:grpo.loss_type=dapo",
            "--seeds", "2", "--set", "loop.iterations=1", "--out", str(out), "--report-only"]
    assert main(argv) == 2 and "holds no comparison yet" in capsys.readouterr().err
    out.mkdir()
    (out / "comparison.yaml").write_text(yaml.safe_dump(compare.from_args(build_parser().parse_args(argv)).to_dict()))
    for v, s in [("a", 0), ("a", 1), ("b", 0)]:
        write_cell(out, v, s, *SEEDS[v, s])
    monkeypatch.setattr(compare, "_start", lambda *a, **k: pytest.fail("--report-only started a cell"))
    assert main(argv) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert {c["cell"]: c["status"] for c in result["cells"]}["b/seed1"] != "finished"
    assert result["metrics"]["heldout/attack_success_rate"]["variants"]["a"]["final"]["n"] == 10


def test_another_comparison_in_the_same_folder_is_refused(tmp_path):
    tmp_path.joinpath("comparison.yaml").write_text(yaml.safe_dump(TWO.to_dict()))
    compare.check_out(TWO.replace(seeds=(0, 1, 2)), tmp_path)  # more seeds: fine
    other = TWO.replace(variants={"a": TWO.variants["a"], "b": Variant(("grpo.loss_type=dr_grpo",))}, preset="demo")
    with pytest.raises(ConfigError, match=r"differs from .* in \['preset', 'variants.b.set'\]"):
        compare.check_out(other, tmp_path)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a comparison folder"):
        compare.check_out(TWO, stray)


# ---------------------------------------------------------------------------------------------- shipped


def test_the_shipped_comparisons_default_to_the_demo_preset_and_three_seeds():
    assert set(SHIPPED) <= set(compare.shipped())
    for name in SHIPPED:
        c = compare.load(name)
        assert (c.name, c.preset, c.seeds, c.baseline) == (name, "demo", (0, 1, 2), next(iter(c.variants)))


@pytest.mark.parametrize("name", sorted(compare.shipped()))
def test_every_shipped_comparison_validates_on_tiny(name, tmp_path):
    c = compare.load(name)
    assert c.name == name
    cells = compare.plan(c.replace(preset="tiny"), tmp_path)  # apply_overrides + validate, every cell
    assert len(cells) == len(c.seeds) * len(c.variants)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_on_tiny(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "training.cli", "compare", "--preset", "tiny", "--variant", "grpo:grpo.loss_type=grpo",
           "--variant", "dapo:grpo.loss_type=dapo,grpo.eps_high=0.28", "--seeds", "2", "--jobs", "2",
           "--set", "loop.iterations=1", "--set", "loop.eval_scenarios=2", "--set", "loop.tensorboard=false", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "4 cells (0 finished, 0 to resume, 4 to start); jobs 2 (1 thread(s) each)" in proc.stdout
    assert proc.stdout.count("] start ") == 4 and proc.stdout.count("] done ") == 4
    result = json.loads((out / "comparison.json").read_text())
    assert result["missing"] == [] and result["jobs"] == 2 and all(c["wall_s"] > 0 for c in result["cells"])
    for variant in ("grpo", "dapo"):
        final = result["metrics"]["heldout/attack_success_rate"]["variants"][variant]["final"]
        assert final["seeds"] == 2 and 0 <= final["low"] <= final["value"] <= final["high"] <= 1
        assert isinstance(result["metrics"]["heldout/reward_defender"]["variants"][variant]["final"]["value"], float)
        assert (out / variant / "seed1" / "report.md").is_file() and (out / variant / "seed1" / "train.log").is_file()
    assert result["metrics"]["heldout/unsafe_rate"]["variants"]["dapo"]["vs_baseline"]["reading"] in (
        "improved", "worse", "within noise")
    assert len(list((out / "plots").glob("*.png"))) == len(compare.METRICS)
    md = (out / "comparison.md").read_text()
    assert "| dapo | 1 | finished |" in md and "reproduce: `triplay compare --variant grpo:grpo.loss_type=grpo" in md
