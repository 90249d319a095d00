"""``report.md`` and PNG plots of every metric across iterations, from a run's metrics records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_report", "PLOTS", "iteration_table"]

PLOTS = {
    "rewards": ("Reward per role (training phases)", ["red/reward_attacker", "blue/reward_defender", "eval/reward_evaluator"]),
    "attack_success": ("Attack success rate (held-out, panel-judged)", ["eval/attack_success_rate"]),
    "defender_rates": ("Defender on harmful held-out seeds", ["eval/unsafe_rate", "eval/refusal_rate", "eval/guidance_rate"]),
    "over_refusal": ("Over-refusal on benign look-alikes", ["eval/over_refusal_rate"]),
    "evaluator": ("Evaluator vs the panel", ["eval/evaluator_agreement", "eval/evaluator_valid_rate"]),
    "diversity": ("Attack diversity (held-out)", ["eval/attack_self_bleu", "eval/attack_semantic_similarity"]),
}
"""plot file stem -> (title, metric keys); training-phase metrics are averaged per iteration"""

TABLE_KEYS = [
    "red/reward_attacker", "blue/reward_defender", "eval/reward_evaluator",
    "eval/attack_success_rate", "eval/unsafe_rate", "eval/refusal_rate", "eval/guidance_rate",
    "eval/over_refusal_rate", "eval/evaluator_agreement", "eval/evaluator_valid_rate", "eval/attack_self_bleu",
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


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def iteration_table(metrics: Sequence[dict], keys: Sequence[str] = TABLE_KEYS) -> str:
    rows = _per_iteration(metrics)
    lines = ["| iteration | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for it, row in rows.items():
        lines.append(f"| {it} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def write_report(run_dir: str | Path, metrics: Sequence[dict]) -> Path:
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
            ax.plot(xs, [rows[it][key] for it in xs], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / f"{stem}.png", dpi=100)
        plt.close(fig)
        sections.append(f"### {title}\n\n![{stem}](plots/{stem}.png)\n")
    counts = {k: v for k, v in (metrics[-1].items() if metrics else []) if k.startswith("eval/n_")}
    text = [
        f"# TriPlay run report: {run_dir.name}",
        "",
        "Iteration 0 is the untrained model. Training-phase columns average that iteration's steps; held-out "
        "columns (`eval/`) come from games on seeds training never saw, judged by the offline panel.",
        "",
        iteration_table(metrics),
        "",
        "Items behind the last held-out numbers: " + ", ".join(f"{k[7:]}={int(v)}" for k, v in counts.items()),
        "",
        *sections,
    ]
    report = run_dir / "report.md"
    report.write_text("\n".join(text))
    return report
