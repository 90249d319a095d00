"""``triplay compare``: train several configurations over several seeds and compare their held-out metrics.

A comparison is a base (a preset, an optional config file, common ``--set`` overrides), named variants (each
a list of overrides and/or a config file), a baseline variant (default: the first) and seeds (default 0, 1, 2).
Each (variant, seed) cell is one ``triplay train`` run in its own subprocess, written to
``<out>/<variant>/seed<k>`` with its output in ``train.log``. Per cell the overrides apply in this order: the
base config file, the variant's config file, the common overrides, the variant's overrides, then the cell's own
``loop.runs_dir``/``loop.run_name``/``loop.seed`` (and ``loop.progress=false``).

Cells are resumable one by one: a finished cell (its held-out record of the final iteration is logged and
``report.md`` exists) is skipped, one with a checkpoint continues with ``--resume``, any other starts afresh.
``<out>/comparison.yaml`` holds the resolved comparison; a later call into the same ``<out>`` must resolve to
the same one (only ``seeds`` may change, to add seeds).

The report (``comparison.md``, ``comparison.json``, ``plots/``) pools the seeds: a held-out rate is ``sum k /
sum n`` over the seeds' games, a per-role return the mean of the seeds' values; the 95% intervals are
percentile bootstraps that resample whole seeds (``training.stats.bootstrap_mean(values, clusters=seeds)``),
so they carry seed-to-seed variation, and they need two seeds at least (``n/a`` otherwise).

A comparison file (``training/comparisons/*.yaml`` ships four; ``triplay compare --list``)::

    name: grpo_variants
    preset: demo
    seeds: 3                     # or a list: [0, 4, 7]
    baseline: grpo
    set: [loop.iterations=3]     # common overrides (optional)
    variants:
      grpo: {set: [grpo.loss_type=grpo]}
      dapo: {set: [grpo.loss_type=dapo, grpo.eps_high=0.28], config: dapo.yaml}   # paths: from this file's folder
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from training.config import ConfigError, apply_overrides, config_diff, preset
from training.report import HELDOUT_DIRECTION, HELDOUT_RETURNS, fmt
from training.stats import bootstrap_difference, bootstrap_mean, finite_or_none

__all__ = ["Comparison", "Cell", "SHIPPED", "METRICS", "shipped", "load", "from_args", "parse_variant", "parse_seeds",
           "plan", "run", "summarize", "write_report", "command_line", "core_slices"]

SHIPPED = Path(__file__).resolve().parent / "comparisons"
"""the comparisons that come with the package (``--comparison NAME``)"""
FILE_KEYS = ("name", "description", "preset", "config", "set", "baseline", "seeds", "variants")
VARIANT_KEYS = ("set", "config")
PER_CELL = ("loop.seed", "loop.runs_dir", "loop.run_name")
"""set by the comparison for each cell; a comparison may not override them"""
MAY_CHANGE = ("seeds",)
"""what may differ from the saved comparison.yaml when continuing into the same folder"""
METRICS = (*HELDOUT_DIRECTION, *HELDOUT_RETURNS)
"""the held-out metrics the report compares: the proportions (pooled over games) and each role's mean return"""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SPLIT = re.compile(r",\s*(?=(?:config|[A-Za-z_]\w*(?:\.\w+)+)\s*=)")
"""a comma starts a new override only where ``section.field=`` (or ``config=``) follows"""
CELL_FILE = "compare_cell.json"
"""per cell: wall time, exit code and jobs of the runs ``triplay compare`` made there"""


# ---------------------------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Variant:
    sets: tuple[str, ...] = ()
    """``section.field=value`` overrides"""
    config: str | None = None
    """a YAML file of overrides (applied before every ``--set``)"""


@dataclass(frozen=True)
class Comparison:
    name: str
    variants: dict[str, Variant]
    preset: str = "demo"
    config: str | None = None
    """the base config file, for every variant"""
    sets: tuple[str, ...] = ()
    """common overrides, for every variant (before the variant's own)"""
    baseline: str = ""
    """the variant the others are compared with; empty: the first"""
    seeds: tuple[int, ...] = (0, 1, 2)
    description: str = ""

    def __post_init__(self):
        for what, name in [("comparison name", self.name), *(("variant name", v) for v in self.variants)]:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ValueError(f"{what} {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        if not self.variants:
            raise ValueError(f"comparison {self.name!r} has no variants")
        if not self.baseline:
            object.__setattr__(self, "baseline", next(iter(self.variants)))
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not a variant; variants: {list(self.variants)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        for where, sets in [("the common overrides", self.sets), *((f"variant {v!r}", x.sets) for v, x in self.variants.items())]:
            for item in sets:
                key = item.split("=", 1)[0].strip()
                if key in PER_CELL:
                    raise ValueError(f"{where}: {item!r} sets {key}, which the comparison sets per cell "
                                     f"({', '.join(PER_CELL)}; use --seeds and --out)")

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "preset": self.preset, "config": self.config,
                "set": list(self.sets), "baseline": self.baseline, "seeds": list(self.seeds),
                "variants": {n: {"set": list(v.sets), "config": v.config} for n, v in self.variants.items()}}

    def replace(self, **changes) -> Comparison:
        """A copy with ``changes`` (``None`` values ignored), checked again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_seeds(value) -> tuple[int, ...]:
    """``3`` or ``"3"``: seeds 0, 1, 2; ``"0,4,7"`` or ``[0, 4, 7]``: those."""
    try:
        if isinstance(value, int) and not isinstance(value, bool) or isinstance(value, str) and "," not in value:
            count = int(value)
            if count < 1:
                raise ValueError
            return tuple(range(count))
        items = value.split(",") if isinstance(value, str) else list(value)
        seeds = tuple(int(s) for s in items if str(s).strip())
        if not seeds or any(s < 0 for s in seeds) or any(isinstance(s, bool) for s in items):
            raise ValueError
        return seeds
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be a count N >= 1 (seeds 0..N-1) or a list of seeds >= 0 like 0,4,7, "
                         f"got {value!r}") from None


def parse_variant(spec: str) -> tuple[str, Variant]:
    """``NAME[:KEY=VALUE,KEY=VALUE,...]``; ``config=FILE`` among them gives the variant a config file. A comma
    starts a new override only where ``section.field=`` follows, so ``loop.phases=red,blue`` keeps its comma."""
    name, _, rest = spec.partition(":")
    sets, config = [], None
    for item in SPLIT.split(rest.strip()) if rest.strip() else []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {spec!r}: {item!r} must look like section.field=value")
        if key.strip() == "config":
            config = str(Path(value.strip()).resolve())
        else:
            sets.append(item.strip())
    return name.strip(), Variant(tuple(sets), config)


def shipped() -> dict[str, Path]:
    """Shipped comparison name -> its file."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.yaml"))}


def load(source: str) -> Comparison:
    """A comparison file, or a shipped comparison by name."""
    path = Path(source)
    if not path.is_file():
        if source not in shipped():
            raise ValueError(f"unknown comparison {source!r}: not a file, nor a shipped comparison "
                             f"({', '.join(shipped())}; see triplay compare --list)")
        path = shipped()[source]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    try:
        return from_mapping(data, base_dir=path.parent, default_name=path.stem)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def _strings(value, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) and "=" in s for s in value):
        raise ValueError(f"{what} must be a list of section.field=value strings, got {value!r}")
    return tuple(value)


def _path(value, base_dir: Path, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a file path, got {value!r}")
    return str((base_dir / value).resolve())


def from_mapping(data, *, base_dir: Path = Path("."), default_name: str = "comparison") -> Comparison:
    """A :class:`Comparison` from a comparison file's mapping (relative config paths start at ``base_dir``)."""
    if not isinstance(data, dict):
        raise ValueError(f"a comparison must be a mapping with {list(FILE_KEYS)}, got {data!r}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; valid keys: {list(FILE_KEYS)}")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"variants must be a mapping of name -> {{set: [...], config: FILE}}, got {variants!r}")
    parsed = {}
    for name, v in variants.items():
        v = v or {}
        if not isinstance(v, dict) or set(v) - set(VARIANT_KEYS):
            raise ValueError(f"variant {name!r} must be a mapping with keys {list(VARIANT_KEYS)}, got {v!r}")
        parsed[str(name)] = Variant(_strings(v.get("set"), f"variant {name!r}: set"),
                                    _path(v.get("config"), base_dir, f"variant {name!r}: config"))
    return Comparison(name=str(data.get("name") or default_name), variants=parsed, preset=data.get("preset") or "demo",
                      config=_path(data.get("config"), base_dir, "config"), sets=_strings(data.get("set"), "set"),
                      baseline=data.get("baseline") or "", seeds=parse_seeds(3 if data.get("seeds") is None else data["seeds"]),
                      description=str(data.get("description") or ""))


def from_args(args) -> Comparison:
    """The comparison ``triplay compare`` was given: a file or ``--variant``s, then the command line's
    ``--preset``, ``--config``, ``--set`` (after the file's), ``--seeds``, ``--baseline`` and ``--name``."""
    if args.comparison and args.variants:
        raise ValueError("pass --comparison FILE_OR_NAME or --variant NAME:KEY=VALUE,..., not both")
    if args.comparison:
        comparison = load(args.comparison)
    elif args.variants:
        variants = {}
        for spec in args.variants:
            name, variant = parse_variant(spec)
            if name in variants:
                raise ValueError(f"--variant {name!r} is given twice")
            variants[name] = variant
        comparison = Comparison(name=args.name or "-vs-".join(variants), variants=variants, baseline=args.baseline or "")
    else:
        raise ValueError(f"nothing to compare: pass --comparison FILE_OR_NAME (shipped: {', '.join(shipped())}) or "
                         "--variant NAME:KEY=VALUE,... once per variant")
    return comparison.replace(name=args.name, preset=args.preset, baseline=args.baseline,
                              config=str(Path(args.config).resolve()) if args.config else None,
                              sets=(*comparison.sets, *args.sets) if args.sets else None,
                              seeds=parse_seeds(args.seeds) if args.seeds is not None else None)


def command_line(args, out: Path) -> str:
    """The ``triplay compare`` command that reproduces this one (output folder and jobs included)."""
    cmd = ["triplay", "compare", *(x for v in args.variants for x in ("--variant", v))]
    for flag in ("comparison", "preset", "config", "baseline", "seeds", "name"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    cmd += [*(x for s in args.sets for x in ("--set", s)), "--out", str(out), "--jobs", str(args.jobs)]
    return shlex.join(cmd)


def list_text() -> str:
    lines = []
    for name, path in shipped().items():
        c = load(str(path))
        variants = ", ".join(f"{v} (baseline)" if v == c.baseline else v for v in c.variants)
        lines.append(f"{name}: {variants}; preset {c.preset}, seeds {','.join(map(str, c.seeds))}"
                     + (f"\n    {c.description}" if c.description else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    variant: str
    seed: int
    run_dir: Path
    argv: list[str]
    """``triplay`` arguments: ``train --preset ... --set ...`` (``--resume`` is added when it resumes)"""
    final_iteration: int
    merged_config: dict | None = None
    """when both the base and the variant have a config file: their merge, written to ``--config`` first"""

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def state(self) -> str:
        """``finished``, ``resume`` (a checkpoint is there) or ``fresh``."""
        if (self.run_dir / "report.md").is_file() and self.final_iteration in heldout_records(self.run_dir):
            return "finished"
        if any((self.run_dir / name / "state.pt").is_file() for name in ("checkpoint", "checkpoint.old")):
            return "resume"
        return "fresh"

    def info(self) -> dict:
        path = self.run_dir / CELL_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


def heldout_records(run_dir: Path) -> dict[int, dict]:
    """Iteration -> held-out record of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    records = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("phase") == "heldout":
            records[int(record["iteration"])] = record
    return records


def _merged_files(first: str, second: str) -> dict:
    """Two config files as one, the way applying them in turn would: per section, the second's fields win."""
    a, b = (yaml.safe_load(Path(f).read_text()) or {} for f in (first, second))
    return {**a, **{k: {**a[k], **v} if isinstance(a.get(k), dict) and isinstance(v, dict) else v for k, v in b.items()}}


def plan(comparison: Comparison, out: Path) -> list[Cell]:
    """Every cell of the comparison, its config validated; raises ConfigError naming the variant."""
    start = preset(comparison.preset)
    try:  # the common part alone: a bad common override is not blamed on the first variant
        base = apply_overrides(start, yaml_file=comparison.config)
        apply_overrides(base, sets=comparison.sets)
    except ConfigError as e:
        raise ConfigError(f"the common overrides: {e}") from None
    cells = []
    for name, variant in comparison.variants.items():
        files = [f for f in (comparison.config, variant.config) if f]
        for seed in comparison.seeds:
            runs_dir = out / name
            own = [f"loop.runs_dir={json.dumps(str(runs_dir))}", f"loop.run_name=seed{seed}", f"loop.seed={seed}",
                   "loop.progress=false"]
            sets = [*comparison.sets, *variant.sets, *own]
            try:
                cfg = apply_overrides(base, yaml_file=variant.config, sets=sets).validate()
            except ConfigError as e:
                raise ConfigError(f"variant {name!r}: {e}") from None
            merged = None
            if len(files) == 2:  # `train` takes one --config
                merged, files = _merged_files(*files), [str(runs_dir / "config.yaml")]
            argv = ["train", "--preset", comparison.preset, *(["--config", files[0]] if files else []),
                    *(x for s in sets for x in ("--set", s))]
            cells.append(Cell(name, seed, cfg.run_dir, argv, cfg.loop.iterations, merged))
    return cells


def check_out(comparison: Comparison, out: Path) -> None:
    """Refuse an ``out`` that holds another comparison (naming the keys) or is not a comparison folder."""
    saved = out / "comparison.yaml"
    if saved.is_file():
        differ = [k for k in config_diff(yaml.safe_load(saved.read_text()) or {}, comparison.to_dict())
                  if k not in MAY_CHANGE]
        if differ:
            raise ConfigError(f"{out} holds another comparison: it differs from {saved} in {differ}; use the same "
                              f"comparison and overrides (only {list(MAY_CHANGE)} may change), or another --out")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a comparison folder (no comparison.yaml); choose another --out")


def core_slices(jobs: int, usable: list[int] | None = None) -> list[list[int]]:
    """A disjoint slice of the usable cores per job (``len // jobs`` each); more jobs than cores share them."""
    if usable is None:
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(usable) // jobs)
    if jobs <= len(usable):
        return [usable[i * per:(i + 1) * per] for i in range(jobs)]
    return [[usable[i % len(usable)]] for i in range(jobs)]


def _tail(path: Path, lines: int = 10) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in text[-lines:])


def _start(cell: Cell, cores: list[int]) -> tuple[subprocess.Popen, object, str]:
    mode = cell.state()
    if mode == "fresh" and cell.run_dir.exists():
        shutil.rmtree(cell.run_dir)  # a partial run with no checkpoint: nothing to continue from
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    if cell.merged_config is not None:
        (cell.run_dir.parent / "config.yaml").write_text(yaml.safe_dump(cell.merged_config, sort_keys=False))
    argv = [sys.executable, "-m", "training.cli", *cell.argv, *(["--resume"] if mode == "resume" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
    fh = open(cell.run_dir / "train.log", "a" if mode == "resume" else "w")
    fh.write(f"$ {shlex.join(argv)}\n")
    fh.flush()
    pin = (lambda: os.sched_setaffinity(0, cores)) if hasattr(os, "sched_setaffinity") else None
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    return proc, fh, mode


def _record(cell: Cell, rc: int, seconds: float, jobs: int, threads: int) -> None:
    info = cell.info()
    info = {"wall_s": info.get("wall_s", 0.0) + seconds, "runs": info.get("runs", 0) + 1, "exit_code": rc,
            "jobs": jobs, "threads": threads}
    (cell.run_dir / CELL_FILE).write_text(json.dumps(info, indent=2) + "\n")


def run_cells(cells: list[Cell], *, jobs: int, log=print) -> list[Cell]:
    """Run the cells, ``jobs`` at once, each pinned to its own cores; returns the cells that failed."""
    slots = core_slices(jobs)
    free, running, failed, started = list(range(len(slots))), {}, [], 0
    pending = list(cells)
    try:
        while pending or running:
            while pending and free:
                slot, cell = free.pop(0), pending.pop(0)
                started += 1
                proc, fh, mode = _start(cell, slots[slot])
                running[slot] = (cell, proc, fh, time.perf_counter(), started)
                log(f"[{started}/{len(cells)}] start  {cell.label} ({mode}, cores {','.join(map(str, slots[slot]))})")
            time.sleep(0.2)
            for slot, (cell, proc, fh, t0, k) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                seconds = time.perf_counter() - t0
                fh.close()
                _record(cell, rc, seconds, jobs, len(slots[slot]))
                del running[slot]
                free.append(slot)
                if rc == 0:
                    log(f"[{k}/{len(cells)}] done   {cell.label} in {seconds:.1f} s")
                else:
                    failed.append(cell)
                    log(f"[{k}/{len(cells)}] FAILED {cell.label}: exit {rc} after {seconds:.1f} s; "
                        f"{cell.run_dir / 'train.log'} ends:\n{_tail(cell.run_dir / 'train.log')}")
    except KeyboardInterrupt:
        for slot, (cell, proc, fh, t0, _) in running.items():  # each got the terminal's Ctrl-C; checkpoints are atomic
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            fh.close()
            _record(cell, proc.returncode, time.perf_counter() - t0, jobs, len(slots[slot]))
        raise
    return failed


def run(comparison: Comparison, out: Path, *, jobs: int = 1, command: str = "", dry_run: bool = False,
        report_only: bool = False, log=print) -> int:
    """Validate, run what is not finished, write the report; 1 when a cell failed, else 0. ``report_only`` runs
    no cell: the report reads the finished ones and marks the others missing."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    cells = plan(comparison, out)
    check_out(comparison, out)
    states = {c.label: c.state() for c in cells}
    todo = [c for c in cells if states[c.label] != "finished"]
    counts = ", ".join(f"{sum(s == k for s in states.values())} {word}"
                       for k, word in (("finished", "finished"), ("resume", "to resume"), ("fresh", "to start")))
    slots = core_slices(jobs)
    log(f"triplay compare: {comparison.name}: {len(comparison.variants)} variants x {len(comparison.seeds)} seeds = "
        f"{len(cells)} cells ({counts}); jobs {jobs} ({len(slots[0])} thread(s) each); out {out}")
    if dry_run:
        for c in cells:
            log(f"{c.label:<24} {states[c.label]:<8} {shlex.join(['python', '-m', 'training.cli', *c.argv])}")
        return 0
    if report_only:
        if not (out / "comparison.yaml").is_file():
            raise ValueError(f"--report-only: {out} holds no comparison yet; run the command without --report-only first")
        todo = []
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.yaml").write_text(yaml.safe_dump(comparison.to_dict(), sort_keys=False))
    t0 = time.perf_counter()
    failed = run_cells(todo, jobs=jobs, log=log)
    result = write_report(comparison, out, cells, command=command, jobs=jobs, cells_wall_s=time.perf_counter() - t0)
    missing = [c["cell"] for c in result["cells"] if c["status"] != "finished"]
    earlier = sum(state == "finished" for state in states.values())
    log(f"summary: {len(cells) - len(missing)} of {len(cells)} cells finished ({earlier} earlier, "
        f"{len(cells) - len(missing) - earlier} now), {len(failed)} failed{': ' + ', '.join(c.label for c in failed) if failed else ''}; "
        f"cells {result['cells_wall_s']:.1f} s, with the report {time.perf_counter() - t0:.1f} s")
    log(f"report: {out / 'comparison.md'}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- aggregation


def _items(records: dict[int, dict], key: str) -> tuple[list[float], list[int], dict[int, float]]:
    """The seeds' values of ``key`` as items with their seed: a rate's k of n games as 0/1 values, a return as
    one value per seed; plus each seed's own value."""
    values, clusters, per_seed = [], [], {}
    for seed, record in records.items():
        value = finite_or_none(record.get(key))
        if value is None:
            continue
        if key in HELDOUT_DIRECTION:
            n = int(record.get(key.replace("heldout/", "heldout/n_", 1)) or 0)
            if not n:
                continue
            k = round(value * n)
            values += [1.0] * k + [0.0] * (n - k)
            clusters += [seed] * n
        else:
            values.append(value)
            clusters.append(seed)
        per_seed[seed] = value
    return values, clusters, per_seed


def _pooled(records: dict[int, dict], key: str) -> dict:
    values, clusters, per_seed = _items(records, key)
    return {**bootstrap_mean(values, clusters=clusters), "seeds": len(per_seed),
            "per_seed": {str(s): v for s, v in per_seed.items()}}


def _difference(a: dict[int, dict], b: dict[int, dict], key: str) -> dict:
    """``a - b`` pooled over seeds, each side's seeds resampled; ``n/a`` with fewer than 2 seeds a side."""
    (va, ca, sa), (vb, cb, sb) = _items(a, key), _items(b, key)
    if len(sa) < 2 or len(sb) < 2:
        diff = sum(va) / len(va) - sum(vb) / len(vb) if va and vb else None
        return {"diff": diff, "low": None, "high": None, "reading": "n/a"}
    return bootstrap_difference(va, vb, clusters_a=ca, clusters_b=cb, higher_is_better=HELDOUT_DIRECTION.get(key))


def summarize(comparison: Comparison, cells: list[Cell]) -> dict:
    """The numbers of ``comparison.json``: per metric and variant, the final iteration pooled over the finished
    seeds, the difference from the baseline, the change from iteration 0, and every iteration (for the plots)."""
    runs: dict[str, dict[int, dict[int, dict]]] = {v: {} for v in comparison.variants}  # variant -> seed -> iteration -> record
    final = {}
    for c in cells:
        final[c.variant] = c.final_iteration
        if c.state() == "finished":
            runs[c.variant][c.seed] = heldout_records(c.run_dir)
    at = lambda v, it: {s: r[it] for s, r in runs[v].items() if it in r}  # noqa: E731
    metrics = {}
    for key in METRICS:
        per_variant = {}
        for v in comparison.variants:
            last, series = at(v, final[v]), {it: _pooled(at(v, it), key) for it in range(final[v] + 1)}
            per_variant[v] = {
                "final": series[final[v]],
                "vs_baseline": None if v == comparison.baseline else _difference(last, at(comparison.baseline, final[comparison.baseline]), key),
                "change": {"first": series[0]["value"], **_difference(last, at(v, 0), key)},
                "iterations": [{"iteration": it, **{k: p[k] for k in ("value", "low", "high", "n", "seeds")}}
                               for it, p in series.items() if p["value"] is not None],
            }
        metrics[key] = {"higher_is_better": HELDOUT_DIRECTION.get(key), "variants": per_variant}
    return metrics


# ---------------------------------------------------------------------------------------------- report


def _interval(x: dict, value: str = "value", signed: bool = False) -> str:
    v = x.get(value)
    if v is None:
        return "-"
    f = (lambda y: f"{y:+.3f}") if signed else fmt
    bounds = "n/a" if x.get("low") is None else f"{f(x['low'])}, {f(x['high'])}"
    return f"{f(v)} [{bounds}]"


def _direction(better) -> str:
    return {True: "higher is better", False: "lower is better"}.get(better, "no direction is better: read higher / lower")


def _plot(key: str, per_variant: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for v, data in per_variant.items():
        points = data["iterations"]
        if not points:
            continue
        xs = [p["iteration"] for p in points]
        line, = ax.plot(xs, [p["value"] for p in points], marker="o", label=v)
        banded = [p for p in points if p["low"] is not None]
        if banded:  # the seeds' bootstrap interval: a gap inside the bands is noise
            ax.fill_between([p["iteration"] for p in banded], [p["low"] for p in banded], [p["high"] for p in banded],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    if key in HELDOUT_DIRECTION:
        ax.set_ylim(-0.02, 1.02)  # proportions on their whole scale
        ax.set_ylabel("rate (games of all seeds)")
    else:
        ax.set_ylabel("mean return (game units)")
    ax.set_title(f"{key} (band: 95% bootstrap over seeds)", fontsize=9)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no finished cell logged it", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cells_table(cells: list[Cell]) -> tuple[list[dict], list[str]]:
    rows, lines = [], ["| variant | seed | status | wall time | jobs | run |", "|---|---|---|---|---|---|"]
    for c in cells:
        info, state = c.info(), c.state()
        status = "finished" if state == "finished" else (
            f"failed (exit {info['exit_code']})" if info.get("exit_code") not in (None, 0) else "not run")
        wall = info.get("wall_s")
        rows.append({"cell": c.label, "variant": c.variant, "seed": c.seed, "run_dir": str(c.run_dir),
                     "status": "finished" if state == "finished" else "missing", "detail": status,
                     "wall_s": wall, "jobs": info.get("jobs")})
        shown = status if state == "finished" else f"**missing**: {status}"
        lines.append(f"| {c.variant} | {c.seed} | {shown} | {'-' if wall is None else f'{wall:.1f} s'} | "
                     f"{info.get('jobs', '-')} | `{c.run_dir}` |")
    return rows, lines


def write_report(comparison: Comparison, out: Path, cells: list[Cell], *, command: str = "", jobs: int = 1,
                 cells_wall_s: float | None = None) -> dict:
    """Write ``comparison.md``, ``comparison.json`` and ``plots/<metric>.png`` into ``out``; returns the json.
    ``cells_wall_s``: how long this call's cells took, start to end (None: not said)."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    metrics = summarize(comparison, cells)
    rows, cell_lines = _cells_table(cells)
    missing = [r["cell"] for r in rows if r["status"] == "missing"]
    base = comparison.baseline
    c = comparison
    text = [f"# TriPlay comparison: {c.name}", "", *([c.description, ""] if c.description else []),
            f"- preset `{c.preset}`" + (f", config `{c.config}`" if c.config else "")
            + (f"; common overrides: {', '.join(f'`{s}`' for s in c.sets)}" if c.sets else ""),
            f"- variants (baseline **{base}**):",
            *(f"  - `{n}`: {', '.join(f'`{s}`' for s in v.sets) or '(the base as it is)'}"
              + (f", config `{v.config}`" if v.config else "") for n, v in c.variants.items()),
            f"- seeds: {', '.join(map(str, c.seeds))} (one run per variant and seed)",
            f"- jobs: {jobs} (cells run at once, each on its own cores)"
            + (f"; this call ran its cells in {cells_wall_s:.1f} s" if cells_wall_s is not None else ""),
            f"- reproduce: `{command}`" if command else "", "",
            "## Cells", "", *cell_lines, ""]
    if missing:
        text += [f"**{len(missing)} cell(s) missing** ({', '.join(missing)}): left out of every number below; run "
                 "the command again to retry them (finished cells are kept).", ""]
    text += ["## Held-out metrics at the final iteration", "",
             "A rate pools the games of every finished seed (sum k / sum n); a return is the mean of the seeds' "
             "values. `[low, high]` is a 95% percentile bootstrap interval that resamples whole seeds, so it "
             "carries seed-to-seed variation; with fewer than 2 seeds it is `n/a`. `vs " + base + "` is the "
             "difference from the baseline (each side's seeds resampled), `iteration 0 -> final` the change "
             "over training (the two evaluations treated as independent samples); the reading is improved / "
             "worse where the metric has a good direction, higher / lower where it has none, within noise when "
             "the interval holds 0, n/a without 2 seeds.", ""]
    for key, m in metrics.items():
        stem = key.split("/", 1)[1]
        text += [f"### `{key}` ({_direction(m['higher_is_better'])})", "",
                 f"| variant | final [95% CI] | per seed | vs {base} [95% CI] | reading | iteration 0 -> final [95% CI] | reading |",
                 "|---|---|---|---|---|---|---|"]
        for v, d in m["variants"].items():
            f, vs, ch = d["final"], d["vs_baseline"], d["change"]
            size = f"(n={f['n']}, seeds={f['seeds']})" if key in HELDOUT_DIRECTION else f"(seeds={f['seeds']})"
            seeds = ", ".join(f"s{s} {fmt(x)}" for s, x in f["per_seed"].items()) or "-"
            text.append(f"| {v}{' (baseline)' if v == base else ''} | {_interval(f)} {size} | {seeds} | "
                        f"{'-' if vs is None else _interval(vs, 'diff', signed=True)} | {'-' if vs is None else vs['reading']} | "
                        f"{fmt(ch['first'])} -> {fmt(f['value'])}: {_interval(ch, 'diff', signed=True)} | {ch['reading']} |")
        _plot(key, m["variants"], plots / f"{stem}.png")
        text += ["", f"![{stem}](plots/{stem}.png)", ""]
    result = {"name": c.name, "command": command, "jobs": jobs, "cells_wall_s": cells_wall_s, "comparison": c.to_dict(), "cells": rows,
              "missing": missing, "metrics": metrics}
    (out / "comparison.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    (out / "comparison.md").write_text("\n".join(text))
    return result

