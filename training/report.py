"""Rendering: a run's ``report.md`` with plots across iterations, and ``triplay eval``'s ``eval.md`` with bar charts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "PLOTS", "iteration_table", "write_eval_report", "fmt"]

PLOTS = {
    "rewards": ("Reward per role (training phases)", ["red/reward_attacker", "blue/reward_defender", "eval/reward_evaluator"]),
    "attack_success": ("Attack success rate (held-out, panel-judged)",
                       ["heldout/attack_success_rate", "heldout/reference_attack_success_rate"]),
    "defender_rates": ("Defender on harmful held-out seeds", ["heldout/unsafe_rate", "heldout/refusal_rate", "heldout/guidance_rate"]),
    "over_refusal": ("Over-refusal on benign look-alikes", ["heldout/over_refusal_rate"]),
    "evaluator": ("Evaluator vs the panel", ["heldout/evaluator_agreement", "heldout/evaluator_valid_rate"]),
    "diversity": ("Attack diversity (held-out)", ["heldout/attack_self_bleu", "heldout/attack_semantic_similarity"]),
}
"""plot file stem -> (title, metric keys); training-phase metrics are averaged per iteration"""

CONDITIONAL_KEYS = {"heldout/reference_attack_success_rate"}
"""plotted keys that only some runs log (against defender_1: ``game.num_defenders >= 2``)"""

TABLE_KEYS = [
    "red/reward_attacker", "blue/reward_defender", "eval/reward_evaluator",
    "heldout/attack_success_rate", "heldout/unsafe_rate", "heldout/refusal_rate", "heldout/guidance_rate",
    "heldout/over_refusal_rate", "heldout/evaluator_agreement", "heldout/evaluator_valid_rate", "heldout/attack_self_bleu",
]


def _per_iteration(metrics: Sequence[dict]) -> dict[int, dict[str, float]]:
    """Mean of each metric per iteration (training steps of an iteration are averaged)."""
    sums: dict[int, dict[str, list[float]]] = {}
    for record in metrics:
        row = sums.setdefault(int(record["iteration"]), {})
        for k, v in record.items():
            if isinstance(v, (int, float)) and "/" in k and not k.startswith("time/"):
                row.setdefault(k, []).append(float(v))
    return {it: {k: sum(v) / len(v) for k, v in row.items()} for it, row in sorted(sums.items())}


def fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _with_interval(row: dict, key: str, low: str | None = None, high: str | None = None) -> str:
    """``0.562 [0.332, 0.769]`` when the row holds the key's 95% interval (``<key>_low``/``_high``, or the
    ``low``/``high`` keys named), else the bare value."""
    low, high = row.get(low or key + "_low"), row.get(high or key + "_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return fmt(row.get(key))
    return f"{fmt(row.get(key))} [{low:.3f}, {high:.3f}]"


def iteration_table(metrics: Sequence[dict], keys: Sequence[str] = TABLE_KEYS) -> str:
    """One row per iteration; held-out proportions as value [95% Wilson interval]."""
    rows = _per_iteration(metrics)
    lines = ["| iteration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for it, row in rows.items():
        # held-out keys have one record per iteration; a training column averages steps, whose bounds do not average
        lines.append(f"| {it} | " + " | ".join(_with_interval(row, k) if k.startswith("heldout/") else fmt(row.get(k))
                                              for k in keys) + " |")
    return "\n".join(lines)


HELDOUT_DIRECTION = {
    "heldout/attack_success_rate": None,  # good for the attacker, bad for the defender: read as higher/lower
    "heldout/reference_attack_success_rate": True,  # against the fixed reference defender: the attacker's strength
    "heldout/unsafe_rate": False, "heldout/refusal_rate": None, "heldout/guidance_rate": True,
    "heldout/over_refusal_rate": False, "heldout/evaluator_agreement": True, "heldout/evaluator_valid_rate": True,
}
"""held-out proportion -> whether higher is better (None: neither; the reading says higher/lower)"""


STEP_PANELS = [
    ("reward_{role}", "mean reward (band: 95% bootstrap interval over GRPO groups)", "reward (game units)"),
    ("loss", "GRPO loss", "loss"),
    ("kl", "KL to the reference (k3; 0 when grpo.beta = 0)", "nats / token"),
    ("entropy", "entropy (sampled-token surprisal)", "nats / token"),
    ("clip_frac", "clipped tokens (low + high)", "share of tokens"),
    ("grad_norm", "gradient norm (before clipping)", "L2 norm"),
    ("completion_tokens_mean", "response length", "tokens"),
]
"""per-optimizer-step panels: (metric under ``<phase>/``, title, y-axis label)"""


def _step_series(metrics: Sequence[dict], phase: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in metrics:
        if r.get("phase") != phase:
            continue
        if key == "clip_frac":
            parts = [r.get(f"{phase}/clip_frac_low"), r.get(f"{phase}/clip_frac_high")]
            v = None if None in parts else sum(parts)
        else:
            v = r.get(f"{phase}/{key}")
        if isinstance(v, (int, float)) and not math.isnan(v):
            xs.append(int(r.get("global_step", len(xs) + 1)))
            ys.append(float(v))
    return xs, ys


def _step_figure(metrics: Sequence[dict], path: Path) -> bool:
    """One panel per training statistic, x = global optimizer step, a line per role; False when nothing trained."""
    import matplotlib.pyplot as plt

    from training.coevolve import PHASE_ROLE

    if not any(r.get("phase") in PHASE_ROLE for r in metrics):
        return False
    fig, axes = plt.subplots(len(STEP_PANELS), 1, figsize=(7, 2.2 * len(STEP_PANELS)), sharex=True)
    for ax, (key, title, unit) in zip(axes, STEP_PANELS):
        for phase, role in PHASE_ROLE.items():
            name = key.format(role=role)
            xs, ys = _step_series(metrics, phase, name)
            if xs:
                line, = ax.plot(xs, ys, marker=".", label=f"{role} ({phase})")
                lows, highs = _step_series(metrics, phase, name + "_low"), _step_series(metrics, phase, name + "_high")
                if lows[0] and lows[0] == highs[0]:  # the mean reward's bootstrap interval as a band
                    ax.fill_between(lows[0], lows[1], highs[1], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
        if key in ("clip_frac", "entropy", "grad_norm", "completion_tokens_mean", "kl"):
            ax.set_ylim(bottom=0)  # non-negative quantities start at 0: no zoom that makes noise look like a trend
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("global optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def transcripts_section(run_dir: Path, per_iteration: int = 2, width: int = 300) -> list[str]:
    """The highest- and lowest-reward games of each iteration's training steps (``transcripts.jsonl``)."""
    path = run_dir / "transcripts.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cut = lambda t: (t or "").replace("\n", " ")[:width] + ("..." if t and len(t) > width else "")  # noqa: E731
    out = ["## Games played (highest and lowest reward of each phase)", ""]
    for it in sorted({r["iteration"] for r in rows}):
        out.append(f"### Iteration {it}")
        for r in [r for r in rows if r["iteration"] == it and r["step"] == 0][: 3 * per_iteration]:
            kind = "harmful" if r["harmful"] else "benign"
            out += [f"- **{r['phase']}, {r['which']} reward {r['reward']:+.3f}** ({r['agent']}, {kind} seed; verdicts "
                    f"{r['verdicts']}, panel {r['panel_verdicts']})",
                    f"  - seed: {cut(r['seed'])}", f"  - attack: {cut(r['attack'])}",
                    *(f"  - response {d}: {cut(t)}" for d, t in enumerate(r["responses"]))]
            if r["phase"] == "eval":
                out.append(f"  - evaluator wrote: {cut(r['text'])}")
        out.append("")
    return out


def held_out_changes(metrics: Sequence[dict]) -> list[dict]:
    """Each held-out proportion at the first and the last evaluation and their difference, with Newcombe's 95%
    interval (independent samples: each evaluation samples its games afresh) and a plain reading:
    ``[{"key", "first", "last", "v0", "n0", "v1", "n1", "diff", "low", "high", "reading"}, ...]``."""
    from training.stats import proportion_difference

    held = [r for r in metrics if r.get("phase") == "heldout"]
    if len(held) < 2:
        return []
    first, last = held[0], held[-1]
    out = []
    for key, better in HELDOUT_DIRECTION.items():
        n_key = key.replace("heldout/", "heldout/n_")
        v0, v1, n0, n1 = first.get(key), last.get(key), first.get(n_key), last.get(n_key)
        if None in (v0, v1, n0, n1) or math.isnan(v0) or math.isnan(v1) or not n0 or not n1:
            continue
        n0, n1 = int(n0), int(n1)
        d = proportion_difference(round(v1 * n1), n1, round(v0 * n0), n0, higher_is_better=better)
        out.append({"key": key, "first": first["iteration"], "last": last["iteration"], "v0": v0, "n0": n0, "v1": v1,
                    "n1": n1, **d})
    return out


def change_table(metrics: Sequence[dict]) -> str:
    """:func:`held_out_changes` as a Markdown table ("" with fewer than two evaluations)."""
    changes = held_out_changes(metrics)
    if not changes:
        return ""
    lines = [f"| held-out metric | iteration {changes[0]['first']} | iteration {changes[0]['last']} | difference [95% CI] "
             "| reading |", "|---|---|---|---|---|"]
    lines += [f"| `{c['key']}` | {c['v0']:.3f} (n={c['n0']}) | {c['v1']:.3f} (n={c['n1']}) | {c['diff']:+.3f} "
              f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['reading']} |" for c in changes]
    return "\n".join(lines)


def beyond_noise(metrics: Sequence[dict]) -> str:
    """One sentence naming the held-out metrics whose first-to-last change is beyond noise ("" when there is no
    change to read)."""
    changes = held_out_changes(metrics)
    if not changes:
        return ""
    moved = [f"`{c['key']}` ({c['reading']})" for c in changes if c["reading"] != "within noise"]
    return ("Beyond noise: " + ", ".join(moved) + "." if moved else
            "No held-out metric moved beyond its 95% interval: every change above is within noise.")


HELDOUT_RETURNS = ["heldout/reward_attacker", "heldout/reward_defender", "heldout/reward_evaluator"]


def _heldout_extra(metrics: Sequence[dict]) -> list[str]:
    """Each role's mean held-out return with its 95% bootstrap interval over games, and the unsafe rate
    corrected for the judge's measured error when the run measured it."""
    held = [r for r in metrics if r.get("phase") == "heldout"]
    keys = [k for k in HELDOUT_RETURNS + ["heldout/unsafe_rate", "heldout/unsafe_rate_corrected"]
            if any(k in r for r in held)]
    if not keys:
        return []
    note = ("Held-out return per role (reward per game, 95% bootstrap interval over games)"
            + ("; the unsafe rate raw and corrected for the judge's error measured on human objective judgments "
               "(Rogan-Gladen, `judge_error.json`; its interval includes that error)" if "heldout/unsafe_rate_corrected" in keys else "")
            + ":")
    return [note, "", iteration_table(held, keys), ""]


def write_report(run_dir: str | Path, metrics: Sequence[dict], judges: str = "the panel") -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    rows = _per_iteration(metrics)
    iterations = list(rows)
    sections = []
    for stem, (title, keys) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            xs = [it for it in iterations if key in rows[it] and not math.isnan(rows[it][key])]
            if not xs:
                continue
            line, = ax.plot(xs, [rows[it][key] for it in xs], marker="o", label=key)
            banded = [it for it in xs if not math.isnan(rows[it].get(key + "_low", math.nan))]
            if banded:  # the 95% interval as a band: a move inside it is noise
                ax.fill_between(banded, [rows[it][key + "_low"] for it in banded], [rows[it][key + "_high"] for it in banded],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        if all(k.startswith("heldout/") and "rate" in k or "agreement" in k for k in keys):
            ax.set_ylim(-0.02, 1.02)  # proportions on their whole scale: no zoom that makes noise look like a trend
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / f"{stem}.png", dpi=100)
        plt.close(fig)
        sections.append(f"### {title}\n\n![{stem}](plots/{stem}.png)\n")
    if _step_figure(metrics, plots / "optimizer_steps.png"):
        sections.insert(0, "### Training, per optimizer step\n\n![optimizer_steps](plots/optimizer_steps.png)\n")
    held = [r for r in metrics if r.get("phase") == "heldout"]
    counts = {k: v for k, v in (held[-1].items() if held else []) if k.startswith("heldout/n_")}
    text = [
        f"# TriPlay run report: {run_dir.name}",
        "",
        "Iteration 0 is the untrained model. Training-phase columns average that iteration's steps; held-out "
        f"columns (`heldout/`) come from games on seeds training never saw, judged by {judges}.",
        "",
        iteration_table(metrics),
        "",
        *_heldout_extra(metrics),
        "Held-out proportions carry their 95% Wilson interval; the shaded bands in the plots are the same "
        "intervals. From the first evaluation to the last (Newcombe's interval for a difference of proportions; "
        "\"within noise\" when it holds 0):",
        "",
        change_table(metrics) or "(one evaluation only: nothing to compare)",
        "",
        beyond_noise(metrics),
        "",
        "Items behind the last held-out numbers: " + ", ".join(f"{k[10:]}={int(v)}" for k, v in counts.items()),
        "",
        *sections,
        *transcripts_section(run_dir),
    ]
    report = run_dir / "report.md"
    report.write_text("\n".join(text))
    return report


# ---------------------------------------------------------------------------------------------- eval.md


def _metrics_of(node: Any, path: str = ""):
    """Every metric (a dict with ``value`` and ``n``) under ``node``, with its dotted path."""
    if isinstance(node, dict):
        if "value" in node and "n" in node:
            yield path, node
            return
        for k, v in node.items():
            if k in ("confusion_matrix", "examples"):
                continue
            yield from _metrics_of(v, f"{path}.{k}" if path else str(k))


def _n(m: dict | None) -> str:
    if m is None:
        return "-"
    return f"{m['n']}" + (f" (+{m['n_unjudged']} unjudged)" if m.get("n_unjudged") else "")


def _stage_delta(a: dict | None, b: dict | None) -> str:
    """Second stage minus first: for proportions with Newcombe's 95% interval and whether it is beyond noise."""
    if not a or not b or a.get("value") is None or b.get("value") is None:
        return "-"
    d = b["value"] - a["value"]
    if "k" not in a or "k" not in b:
        return f"{d:+.3f}"
    from training.stats import proportion_difference

    x = proportion_difference(b["k"], b["n"], a["k"], a["n"])
    return f"{d:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}] {'within noise' if x['reading'] == 'within noise' else 'beyond noise'}"


def _section_table(stages: dict, section: str) -> list[str]:
    names = [s for s in stages if section in stages[s]]
    if not names:
        return []
    rows: dict[str, dict[str, dict]] = {}
    for s in names:
        for path, m in _metrics_of(stages[s][section]):
            rows.setdefault(path, {})[s] = m
    delta = len(names) == 2
    header = ["metric", *names, *(["delta"] if delta else []), *[f"n ({s})" for s in names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, per in rows.items():
        cells = [f"`{path}`", *(_with_interval(per.get(s, {}), "value", low="low", high="high") for s in names)]
        if delta:
            cells.append(_stage_delta(per.get(names[0]), per.get(names[1])))
        cells += [_n(per.get(s)) for s in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _summary_table(stages: dict) -> list[str]:
    """The charted metrics of every section in one table (the rest follow per section)."""
    names = list(stages)
    if not names:
        return []
    delta = len(names) == 2
    header = ["metric", *names, *(["delta"] if delta else []), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for section in CHART_PATHS:
        for path in _chart_rows(stages, section):
            per = [dict(_metrics_of(stages[s].get(section, {}))).get(path) for s in names]
            values = [None if m is None else m["value"] for m in per]
            cells = [f"`{section}.{path}`", *(fmt(v) for v in values)]
            if delta:
                cells.append("-" if None in values else f"{values[1] - values[0]:+.3f}")
            cells.append(_n(per[-1]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _confusion_table(title: str, matrix: dict) -> list[str]:
    columns = list(next(iter(matrix.values())))
    lines = [f"{title} (rows: truth, columns: predicted)", "", "| truth \\ predicted | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {t} | " + " | ".join(str(row[c]) for c in columns) + " |" for t, row in matrix.items()]
    return lines + [""]


CHART_PATHS = {
    "defender": ("plain.all.", "attacked.all.", "over_refusal_rate"),
    "attacker": ("asr.", "hit_at_k.", "self_bleu", "embedding_distance", "semantic_fidelity"),
    "evaluator": ("vs_judge.accuracy", "vs_judge.valid_rate", "refusal_judgments.accuracy"),
    "capability": ("accuracy", "refusal_rate"),
}
"""which metrics (dotted-path prefixes) each section's bar chart shows"""


def _chart_rows(stages: dict, section: str) -> list[str]:
    paths = []
    for s in stages.values():
        for path, _ in _metrics_of(s.get(section, {})):
            keep = any(path.startswith(p) for p in CHART_PATHS[section])
            if section == "attacker" and path.startswith(("asr.", "hit_at_k.")):
                keep = path.endswith(".all")
            if path.endswith("attack_success_rate"):
                keep = False  # on harmful seeds it equals unsafe_rate, which is shown
            if keep and path not in paths:
                paths.append(path)
    return paths


def _bar_charts(stages: dict, plots: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stages)
    written = []
    for section in CHART_PATHS:
        paths = _chart_rows(stages, section)
        if not paths:
            continue
        values = {s: [dict(_metrics_of(stages[s].get(section, {}))).get(p, {}).get("value") for p in paths] for s in names}
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(paths) + 2), 3.8))
        width = 0.8 / len(names)
        x = np.arange(len(paths))
        for k, s in enumerate(names):
            heights = [np.nan if v is None else v for v in values[s]]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, label=s)
        ax.set_xticks(x, paths, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{section}: {' vs '.join(names)}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = plots / f"eval_{section}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(section)
    return written


def write_eval_report(result: dict, out: str | Path) -> Path:
    """Write ``eval.json``, ``eval.md`` and, with two stages or more, ``plots/eval_<section>.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    stages = result["stages"]
    run = result.get("run") or {}
    final = f" (final = iteration {run['iteration']})" if run.get("iteration") is not None else ""
    adapters = f", adapters: `{result['adapters']}`" if result.get("adapters") else ""
    lines = [f"# TriPlay evaluation{': ' + run['run_name'] if run.get('run_name') else ''}", "",
             f"- model: `{result['model']}`{adapters}",
             f"- safety judge (every safety number): **{result['judge']['name']}**",
             f"- seeds: split `{result['split']}`, up to {result['limit'] or 'all'} per dataset, seed {result['seed']}",
             f"- stages: {', '.join(stages) or '(none)'}{final}",
             f"- time: {result['time_s'].get('total', 0):.1f}s", ""]
    if result.get("items"):
        lines += ["## Items per section (each stage)", "", "| section | items |", "|---|---|"]
        lines += [f"| {section} | {', '.join(f'{k} {v}' for k, v in counts.items())} |"
                  for section, counts in result["items"].items()]
        lines.append("")
    lines += ["## Datasets", "", "| dataset | status | items |", "|---|---|---|"]
    for name, st in result["datasets"].items():
        detail = (f"{st['n_used']} of {st['n_available']}" if st["status"] == "ok"
                  else f"skipped: run `{st['fix']}`")
        lines.append(f"| {name} | {st['status']} | {detail} |")
    lines.append("")
    summary = _summary_table(stages)
    if summary:
        lines += ["## Summary", "", *summary, ""]
    charts = []
    if len(stages) >= 2:
        (out / "plots").mkdir(exist_ok=True)
        charts = _bar_charts(stages, out / "plots")
    for section in ("defender", "attacker", "evaluator", "capability"):
        table = _section_table(stages, section)
        if not table:
            continue
        lines += [f"## {section.capitalize()}", ""]
        if section == "defender":
            first = next(s for s in stages.values() if section in s)
            lines += [f"Attacked condition: attacks written by `{first[section]['attacker']}`.", ""]
        lines += table + [""]
        if section in charts:
            lines += [f"![{section}](plots/eval_{section}.png)", ""]
        if section == "evaluator":
            for stage, s in stages.items():
                if "evaluator" in s:
                    lines += _confusion_table(f"Evaluator vs judge, {stage}", s["evaluator"]["vs_judge"]["confusion_matrix"])
                    if "refusal_judgments" in s["evaluator"]:
                        lines += _confusion_table(f"Evaluator vs human refusal labels, {stage}",
                                                  s["evaluator"]["refusal_judgments"]["confusion_matrix"])
    scores = result["judge"].get("refusal_judgments")
    if scores:
        lines += ["## The safety judge on human-labelled refusal judgments (PyRIT)", "",
                  "| reading | accuracy | precision (refusal) | recall (refusal) | n |", "|---|---|---|---|---|"]
        readings = [("judge: its refusal reading (below)", scores["judge"]),
                    *((f"{name} alone: verdict REFUSAL", s) for name, s in scores["judges"].items()),
                    ("refusal keywords alone", scores["keywords"]),
                    (f"keywords or low similarity ({scores['keywords_or_low_similarity']['similarity']})",
                     scores["keywords_or_low_similarity"])]
        for label, s in readings:
            n = _n({**s["accuracy"], "n_unjudged": s.get("n_unjudged", 0)})
            lines.append(f"| {label} | {fmt(s['accuracy']['value'])} | {fmt(s['precision']['value'])} | "
                         f"{fmt(s['recall']['value'])} | {n} |")
        lines += ["", "The judge's reading: REFUSAL is a refusal, UNSAFE is not, GUIDANCE is one when the request is "
                  "harmful (a constructive redirect, which people label a refusal) and not when it is benign (it "
                  "answered); a request of unknown kind is read by the content judge's request model. The keyword "
                  "judges' rows read only REFUSAL as a refusal.", "",
                  *_confusion_table("Judge (its refusal reading) vs human labels", scores["judge"]["confusion_matrix"])]
    objective = result["judge"].get("objective_judgments")
    if objective:
        lines += ["## The safety judge on human-labelled objective-achieved judgments (PyRIT)", "",
                  "| reading | accuracy | F1 (achieved) | predicted unsafe | people unsafe | n |", "|---|---|---|---|---|---|",
                  f"| judge: verdict UNSAFE = achieved | {fmt(objective['accuracy']['value'])} | {fmt(objective['f1']['value'])} | "
                  f"{fmt(objective['predicted_unsafe_rate']['value'])} | {fmt(objective['people_unsafe_rate']['value'])} | "
                  f"{_n({**objective['accuracy'], 'n_unjudged': objective.get('n_unjudged', 0)})} |", "",
                  "The default content judge was fitted on these rows and PyRIT's refusal rows, so its numbers here are "
                  "in-sample; its cross-validated numbers (folds grouped by objective) come from `python bench/judges.py`.",
                  ""]
    if result["judge"].get("n_unjudged_items"):
        lines += [f"**{result['judge']['n_unjudged_items']} judged items could not be judged** (left out of the rates, "
                  "counted per metric as `n_unjudged`; errors in eval.json).", ""]
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    return out
