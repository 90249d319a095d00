"""The built wheel works on its own: build it, install it (no editable install) into a fresh venv, play and train.

The fresh venv borrows the test venv's third-party packages through a ``.pth`` line (a plain path entry: the
editable finder of the checkout living there is not activated, since ``.pth`` files are only read in site
directories), and the commands run outside the checkout, so every TriPlay module and data file they load
comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "bench", "tests")
DATA_FILES = ("agents/data/smollm2_tokenizer/tokenizer.json.gz", "agents/data/smollm2_tokenizer/tokenizer_config.json",
              "triplay_env/data/harmful.tsv", "triplay_env/data/benign.tsv", "triplay_env/data/capability_probe.tsv",
              "training/comparisons/grpo_variants.yaml")


def _run(cmd, *, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_plays_and_trains(tmp_path):
    t0 = time.perf_counter()
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)  # build from a copy: the checkout gets no build/ folder
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(source)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("triplay-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in DATA_FILES if f not in names], f"data files missing from {wheel.name}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import agents, training, triplay_env; print(triplay_env.__file__, agents.__file__)"],
                 cwd=work, env=env).stdout
    assert str(ROOT) not in where and str(site) in where  # the modules come from the wheel, not the checkout

    triplay = venv / "bin" / "triplay"
    played = _run([str(triplay), "play", "--episodes", "1"], cwd=work, env=env).stdout
    assert "| attacker_0 |" in played and "episode 0" in played
    _run([str(triplay), "train", "--preset", "tiny", "--set", "loop.iterations=1", "--set", "loop.progress=false"],
         cwd=work, env=env)
    run = work / "runs" / "tiny-tiny-seed0"
    assert (run / "checkpoint" / "state.pt").is_file() and (run / "report.md").is_file()
    print(f"wheel build + fresh-venv install + play + tiny train: {time.perf_counter() - t0:.1f} s")
