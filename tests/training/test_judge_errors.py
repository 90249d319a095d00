"""A judge that cannot be reached fails at once in one line, before any model loads; one that answers nothing
readable stops an evaluation instead of reading as a run whose items were all unjudged."""

from __future__ import annotations

import socket


from agents.serve import ChatServer, fixed_reply
from training import cli


def closed_port_url() -> str:
    with socket.socket() as s:  # bind, read the port, close: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_train_with_an_unreachable_judge_fails_in_one_line_before_the_model_loads(tmp_path, capsys, no_model_loads):
    url = closed_port_url()
    code = cli.main(["train", "--preset", "tiny", "--set", f"loop.runs_dir={tmp_path}",
                     "--set", f"judges.panel=[{{url: '{url}', model: guard, format: llama_guard}}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"triplay train: error: judge 0 (llama_guard:guard): cannot reach {url}")


def test_a_server_that_does_not_serve_the_model_is_named_at_start(tmp_path, capsys, no_model_loads):
    with ChatServer(fixed_reply("safe"), model="the-real-name") as server:
        code = cli.main(["train", "--preset", "tiny", "--set", f"loop.runs_dir={tmp_path}",
                         "--set", f"judges.panel=[{{url: '{server.base_url}', model: a-typo}}]"])
    err = capsys.readouterr().err
    assert code == 2 and "does not serve model 'a-typo'; it lists ['the-real-name']" in err


def test_eval_with_an_unreachable_judge_url_fails_in_one_line(tmp_path, capsys, no_model_loads):
    url = closed_port_url()
    code = cli.main(["eval", "--model", "tiny", "--judge-url", url, "--judge-model", "guard", "--no-pull",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot reach {url}" in err
    assert not (tmp_path / "out").exists()


def test_eval_stops_when_its_judge_answers_nothing_readable(tmp_path, capsys, monkeypatch):
    from tests.training.test_evaluation import pull_fake_benchmarks

    monkeypatch.setenv("TRIPLAY_CACHE", str(tmp_path / "cache"))
    pull_fake_benchmarks(tmp_path / "wheels")
    with ChatServer(fixed_reply("I am a language model."), model="chatty", serial=False) as server:
        code = cli.main(["eval", "--sections", "judge", "--judge-url", server.base_url, "--judge-model", "chatty",
                         "--no-pull", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "judge verdict:chatty answered none of the" in err and "its replies could not be parsed" in err
    assert not (tmp_path / "out" / "eval.json").exists()


def test_a_gpu_preset_without_vllm_says_so_at_once_with_the_install_command(tmp_path, capsys, no_model_loads):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    code = cli.main(["train", "--preset", "qwen3-4b", "--set", f"loop.runs_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "model.backend=vllm needs vLLM" in err and "pip install -e '.[vllm]'" in err and "model.backend=hf" in err


def test_a_hub_model_that_is_not_here_is_named_at_once(tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    t0 = time.perf_counter()
    code = cli.main(["train", "--preset", "qwen3-4b", "--set", "model.backend=hf", "--set", f"loop.runs_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "model 'Qwen/Qwen3-4B' is not in the Hugging Face cache" in err and "huggingface-cli download" in err
    assert time.perf_counter() - t0 < 30  # no minute of retries
