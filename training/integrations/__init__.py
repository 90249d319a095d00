"""Adapters that let other trainers train a TriPlay role; each is a thin layer over the PettingZoo env.

| module | trainer | how |
|---|---|---|
| :mod:`training.integrations.trl` | TRL's ``GRPOTrainer`` (``pip install -e '.[trl]'``) | a ``rollout_func`` that plays one role with the trainer's model, the others with TriPlay agents; a reward function that returns the game's reward |
| :mod:`training.integrations.verifiers` | verifiers 0.4.0, v1 API (``pip install -e '.[verifiers]'``) | a multi-agent ``Env`` whose ``run`` lets the game drive the model's seat turn by turn, the others played by TriPlay agents; ``finalize`` records the game's reward |
| :mod:`training.integrations.openenv` | OpenEnv 0.3.0 clients (``pip install -e '.[openenv]'``, ``triplay serve``) | an OpenEnv ``Environment`` served by its ``create_app``: the client plays one role over the WebSocket, TriPlay agents the others, each session its own env and seed |

Each adapter lives in its own module and imports its trainer lazily (:func:`require`), so
``import training.integrations`` costs nothing and works without any of them installed.
"""

import importlib
from collections.abc import Mapping
from typing import Any


def require(module: str, name: str, hint: str, pin: str):
    """``import module`` for the ``name`` integration, or an ``ImportError`` that says how to install it
    (``hint``: the extra, ``pin``: the pinned package)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"TriPlay's {name} integration needs {name}, which is not installed: {hint} "
                          f"(or pip install {pin})") from e


def shared_env_kwargs(env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``env_kwargs`` with one judge panel, one Attack Success Pool (and, for ``verdict_source="gated"``, one
    verdict gate) made once, so that every episode's env shares them, as in TriPlay's own loop."""
    import triplay_env

    config = dict(env_kwargs or {})
    if config.get("panel") is None:
        config["panel"] = triplay_env.default_panel(config.get("embedder"))
    if config.get("attack_success_pool") is None:
        config["attack_success_pool"] = triplay_env.AttackSuccessPool(config.pop("pool_capacity", 10_000))
    if config.get("verdict_source") == "gated" and config.get("gate") is None:
        config["gate"] = triplay_env.VerdictGate()
    return config
