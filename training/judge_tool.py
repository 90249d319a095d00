"""``triplay judge``: the panel as a product: label a file of (prompt, response) pairs, write verdicts and votes.

Input rows (JSONL, one object a line, or CSV with a header) have ``prompt`` and ``response``, and optionally
``seed`` (the original request the prompt was rewritten from) and ``kind`` (``harmful`` or ``benign``).
Output rows (JSONL or CSV, by the output's extension) repeat the input columns and add ``verdict``
(``unsafe``, ``refusal``, ``guidance``, or null when every judge abstained), ``votes`` (judge name ->
verdict or null) and ``rule`` (set when the reply was a non-answer, judged by rule).

Which judge: with no option, the default panel (the one training uses when nothing is configured);
``--config FILE`` reads a judge spec (a ``judges:`` section of a training config, or the spec itself);
``--judge-url`` / ``--judge-model`` / ``--judge-format`` name one HTTP judge; ``--judge evaluator:RUN_DIR``
serves the evaluator adapter a run trained.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from triplay_env.judges import JudgeItem
from triplay_env.panel import Panel

__all__ = ["read_pairs", "judge_rows", "write_verdicts", "load_spec", "KINDS"]

KINDS = {"harmful": True, "benign": False, "": None}
"""``kind`` values and the seed kind each means (empty: unknown)"""


class BadRow(ValueError):
    """An input row that cannot be judged; the message names the file and line."""


def _check_row(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise BadRow(f"{where}: expected an object with 'prompt' and 'response', got {type(row).__name__}")
    for key in ("prompt", "response"):
        if not isinstance(row.get(key), str):
            raise BadRow(f"{where}: '{key}' must be a string, got {row.get(key)!r}")
    seed = row.get("seed")
    if seed is not None and not isinstance(seed, str):
        raise BadRow(f"{where}: 'seed' must be a string when given, got {seed!r}")
    kind = row.get("kind") or ""
    if not isinstance(kind, str) or kind.strip().lower() not in KINDS:
        raise BadRow(f"{where}: 'kind' must be harmful or benign (or empty), got {row.get('kind')!r}")
    return row


def read_pairs(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.csv`` file, each checked; a bad row raises naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    rows = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"prompt", "response"} - set(reader.fieldnames or [])
        if missing:
            raise BadRow(f"{path}:1: the header lacks {sorted(missing)} (it has {reader.fieldnames})")
        for row in reader:
            if None in row:
                raise BadRow(f"{path}:{reader.line_num}: more cells than the header has columns ({len(reader.fieldnames)})")
            row = {k: (v if v != "" or k in ("prompt", "response") else None) for k, v in row.items()}
            rows.append(_check_row(row, f"{path}:{reader.line_num}"))
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRow(f"{path}:{i}: not JSON ({e.msg} at column {e.colno})") from None
            rows.append(_check_row(row, f"{path}:{i}"))
    if not rows:
        raise BadRow(f"{path} holds no rows")
    return rows


def _item(row: dict) -> JudgeItem:
    return JudgeItem(row["prompt"], row["response"], KINDS[(row.get("kind") or "").strip().lower()], row.get("seed"))


def judge_rows(rows: Sequence[dict], panel: Panel, *, batch_size: int = 64, progress: bool = True,
               log: Callable[[str], None] = print) -> list[dict]:
    """Judge ``rows`` in batches of ``batch_size`` (one panel call each), with a progress bar."""
    from tqdm.auto import tqdm

    out: list[dict] = []
    bar = tqdm(total=len(rows), desc="judging", unit="pair", disable=not progress)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        for row, vote in zip(chunk, panel.vote([_item(r) for r in chunk])):
            out.append({**row, "verdict": None if vote.verdict is None else vote.verdict.value,
                        "votes": {n: None if v is None else v.value for n, v in zip(panel.names, vote.votes)},
                        "rule": vote.rule})
        bar.update(len(chunk))
    bar.close()
    return out


def write_verdicts(rows: Sequence[dict], path: str | Path) -> Path:
    """Write ``rows`` as JSONL, or as CSV (``votes`` as a JSON string) when ``path`` ends in ``.csv``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else ("" if v is None else v) for k, v in r.items()})
        path.write_text(buffer.getvalue(), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def load_spec(path: str | Path):
    """A :class:`~agents.judge_spec.JudgeSpec` from a YAML file: a training config's ``judges:`` section, or the
    spec mapping itself (``{aggregation: ..., panel: [...]}``)."""
    from agents.judge_spec import JudgeSpec

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if isinstance(raw, dict) and "judges" in raw:
        return JudgeSpec.from_mapping(raw["judges"], where=f"{path}: judges")
    return JudgeSpec.from_mapping(raw, where=str(path))


def evaluator_panel(run_dir: str, *, log: Callable[[str], None] = print) -> Panel:
    """The evaluator adapter of ``run_dir``'s last checkpoint as a one-judge panel (greedy decoding)."""
    from agents.judge_spec import PolicyJudge
    from training.evaluation.run import _load_roles
    from training.evaluation.subject import EvalOptions, resolve_subject

    subject = resolve_subject(EvalOptions(run=run_dir, sections=("evaluator",)))
    roles = _load_roles(subject, ["evaluator"], log)
    policy = roles.policy("evaluator", max_new_tokens=subject.lengths["evaluator"], temperature=0.0, seed=0,
                          response_prefix=subject.evaluator_prefix)
    judge = PolicyJudge(policy, name=f"evaluator:{Path(run_dir).name}",
                        identity=f"evaluator:{Path(run_dir).resolve()}:{subject.info.get('iteration')}")
    return Panel([judge])


def run_judge(args, *, log: Callable[[str], None] = print) -> int:
    """The ``triplay judge`` command (see the module docstring)."""
    from agents.judge_spec import JudgeSpec, build_panel

    rows = read_pairs(args.input)  # a bad file fails before any judge or model loads
    if args.judge:
        kind, _, target = args.judge.partition(":")
        if kind != "evaluator" or not target:
            raise ValueError(f"--judge must look like evaluator:RUN_DIR, got {args.judge!r}")
        panel, name = evaluator_panel(target, log=log), args.judge
    else:
        if args.config:
            spec = load_spec(args.config)
        elif args.judge_url:
            if not args.judge_model:
                raise ValueError("--judge-url needs --judge-model (the model name the server serves)")
            spec = JudgeSpec.http(args.judge_url, args.judge_model, args.judge_format)
        else:
            spec = JudgeSpec()
        embedder = None
        if spec.needs_minilm:
            from agents.models import load_embedder

            embedder = load_embedder()
        panel, name = build_panel(spec, embedder=embedder), spec.label
    t0 = time.perf_counter()
    judged = judge_rows(rows, panel, batch_size=args.batch_size, progress=not args.no_progress, log=log)
    seconds = time.perf_counter() - t0
    write_verdicts(judged, args.output)
    counts = {v: sum(r["verdict"] == v for r in judged) for v in ("unsafe", "refusal", "guidance", None)}
    log(f"judged {len(judged)} pairs with {name} in {seconds:.1f}s: unsafe {counts['unsafe']}, refusal "
        f"{counts['refusal']}, guidance {counts['guidance']}, no verdict {counts[None]}; wrote {args.output}")
    silent = panel.silent_judges()
    if silent:
        log("error: " + "; ".join(silent))
        return 1
    return 0
