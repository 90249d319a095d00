"""The strategy attacker: an sb3-contrib ``MaskablePPO`` policy over the attack-strategy menu.

The policy sees what ``triplay/StrategyAttacker-v0`` shows (the seed's category one-hot, its kind, the
round fraction), picks a strategy from :data:`triplay_env.strategies.STRATEGIES` among those the action
mask allows, and the strategy's template renders the attack. The same object is an :class:`Agent`, so it
plays ``attacker_0`` of the parallel game through the ordinary protocol (``players["attacker"]`` in
:func:`training.rollout.run_lockstep`).

| method | does |
|---|---|
| :meth:`StrategyAttacker.train` | builds the view with ``gymnasium.make``, trains ``MaskablePPO`` on it |
| :meth:`StrategyAttacker.act` | turns -> attack texts (observation and mask rebuilt from each turn's info) |
| :meth:`StrategyAttacker.choose` | infos -> strategy indices (what ``act`` renders) |
| :meth:`StrategyAttacker.save` / :meth:`StrategyAttacker.load` | one zip: SB3's files plus ``triplay_strategy.json`` |
| :func:`evaluate` | mean episode reward on a view, for the policy or uniform-random over the mask |

The observation's one-hot is over the category list of the view the model was trained on. A view over
another split or dataset may list other categories, so the list travels with the model (in the saved zip)
and :meth:`StrategyAttacker.observation` always uses it, never the list of the env it is playing in.

Usage (needs ``pip install 'triplay[sb3]'``)::

    attacker = StrategyAttacker.train(total_timesteps=4096, env_kwargs={"benign_fraction": 0.0})
    attacker.save("runs/strategy_attacker.zip")
    attacker = StrategyAttacker.load("runs/strategy_attacker.zip")
    rollout = run_lockstep(envs, {"attacker": attacker, "defender": ..., "evaluator": ...}, seeds)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from agents.base import Agent, Turn
from agents.views import strategies_used, strategy_action_mask, strategy_observation
from triplay_env.files import atomic_write
from triplay_env.strategies import STRATEGIES, STRATEGY_NAMES, render

__all__ = ["StrategyAttacker", "evaluate", "ENV_ID", "PPO_DEFAULTS", "METADATA_FILE"]

ENV_ID = "triplay/StrategyAttacker-v0"
METADATA_FILE = "triplay_strategy.json"
"""the file inside the saved zip with the category list, max_rounds and the strategy menu"""

PPO_DEFAULTS: dict[str, Any] = {
    "n_steps": 256,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 3e-3,
    "ent_coef": 0.01,
    "gamma": 0.99,
}
"""Our choice, for a menu bandit of one step per round: short rollouts (256 steps) and a high learning rate
(3e-3, SB3's default is 3e-4) so that a 15-category x 10-strategy table is learnt in a few thousand steps;
a small entropy bonus keeps the masked menu explored early. Any key can be overridden in ``train``."""

_INSTALL_HINT = "the strategy attacker needs sb3-contrib and stable-baselines3: pip install 'triplay[sb3]'"


def _maskable_ppo():
    try:
        from sb3_contrib import MaskablePPO
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return MaskablePPO


class StrategyAttacker(Agent):
    """``attacker_0`` played by a ``MaskablePPO`` policy that picks a strategy and renders the seed with it.

    Args:
        model: a ``sb3_contrib.MaskablePPO`` whose observation is a Box of ``len(categories) + 3`` and whose
            action space is ``Discrete(len(STRATEGIES))``.
        categories: the category list of the one-hot, in the order the model was trained with.
        max_rounds: the view's ``max_rounds`` at training (the observation's round fraction divides by it).
        deterministic: pick the most likely strategy (True) or sample from the masked policy.
    """

    def __init__(self, model, categories: Sequence[str], max_rounds: int = 1, *, deterministic: bool = True):
        categories = [str(c) for c in categories]
        expected = (len(categories) + 3,)
        if tuple(model.observation_space.shape) != expected:
            raise ValueError(
                f"model observation shape {tuple(model.observation_space.shape)} does not fit {len(categories)} "
                f"categories (expected {expected}); pass the category list the model was trained with"
            )
        if getattr(model.action_space, "n", None) != len(STRATEGIES):
            raise ValueError(
                f"model action space {model.action_space} is not Discrete({len(STRATEGIES)}), the strategy menu"
            )
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.model = model
        self.categories = categories
        self.max_rounds = int(max_rounds)
        self.deterministic = deterministic

    # ------------------------------------------------------------------ training

    @classmethod
    def train(cls, total_timesteps: int = 4096, seed: int = 0, env_kwargs: Mapping[str, Any] | None = None,
              *, deterministic: bool = True, torch_threads: int | None = 1, **ppo_kwargs) -> StrategyAttacker:
        """Train ``MaskablePPO`` on ``gymnasium.make("triplay/StrategyAttacker-v0", **env_kwargs)``.

        ``ppo_kwargs`` override :data:`PPO_DEFAULTS` and go to ``MaskablePPO`` (``policy_kwargs``,
        ``verbose``, ...). The model keeps the view as its env, so ``attacker.model.learn(...)`` continues.
        ``torch_threads`` (1, ours) caps torch's intra-op threads while training and restores them after:
        a 64x64 MLP gains nothing from more, and on a loaded 2-core machine two threads made 1,024 steps
        5.5x slower than one (94 s vs 17 s). ``None`` leaves torch's setting alone.
        """
        MaskablePPO = _maskable_ppo()
        import torch

        view = gymnasium.make(ENV_ID, **dict(env_kwargs or {}))
        kwargs = {**PPO_DEFAULTS, "seed": seed, "device": "cpu", **ppo_kwargs}
        threads = torch.get_num_threads()
        try:
            if torch_threads is not None:
                torch.set_num_threads(torch_threads)
            model = MaskablePPO("MlpPolicy", view, **kwargs)
            model.learn(total_timesteps=total_timesteps)
        finally:
            torch.set_num_threads(threads)
        unwrapped = view.unwrapped
        return cls(model, unwrapped.categories, unwrapped.game.max_rounds, deterministic=deterministic)

    # ------------------------------------------------------------------ acting

    def observation(self, info: Mapping[str, Any]) -> np.ndarray:
        """The view's observation for the attacker's ``infos`` entry, over this model's category list."""
        return strategy_observation(info, self.categories, self.max_rounds)

    def action_mask(self, info: Mapping[str, Any]) -> np.ndarray:
        """The view's mask: strategies that fit the seed kind and were not used in this game's earlier rounds.

        Like the view, it reads them back from the earlier rounds' attacks (every template leaves its marker).
        """
        return strategy_action_mask(info["scenario"]["harmful"], strategies_used(info))

    def choose(self, infos: Sequence[Mapping[str, Any]], masks: Sequence[np.ndarray] | None = None) -> list[int]:
        """One strategy index per attacker info (one batched forward pass). ``masks`` default to :meth:`action_mask`."""
        if not infos:
            return []
        obs = np.stack([self.observation(i) for i in infos])  # [B, C + 3]
        mask = np.stack(list(masks) if masks is not None else [self.action_mask(i) for i in infos])  # [B, S]
        actions, _ = self.model.predict(obs, action_masks=mask, deterministic=self.deterministic)
        return [int(a) for a in np.asarray(actions).reshape(-1)]

    def act(self, turns: Sequence[Turn]) -> list[str]:
        for t in turns:
            if t.role != "attacker":
                raise ValueError(f"StrategyAttacker plays the attacker, got a turn for {t.agent!r}")
        chosen = self.choose([t.info for t in turns])
        return [render(a, t.info["scenario"]["text"]) for a, t in zip(chosen, turns, strict=True)]

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model and its metadata to ``path`` (one zip, written as given: no suffix is added).

        Atomic: the zip is written to a temporary file in the same folder and moved over ``path``, so a
        crash never leaves a half-written checkpoint. Returns the path.
        """
        path = Path(path)
        buffer = io.BytesIO()
        self.model.save(buffer)
        # SB3's loader reads "data" and *.pth and ignores other members, so the metadata can share the zip
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.writestr(METADATA_FILE, json.dumps(self.metadata(), indent=2))
        return atomic_write(path, buffer.getvalue())

    def metadata(self) -> dict[str, Any]:
        return {"categories": self.categories, "max_rounds": self.max_rounds, "strategies": list(STRATEGY_NAMES)}

    @classmethod
    def load(cls, path: str | os.PathLike, env_kwargs: Mapping[str, Any] | None = None, *,
             deterministic: bool = True) -> StrategyAttacker:
        """Load a zip written by :meth:`save`.

        With ``env_kwargs`` the model gets a fresh view (``gymnasium.make(ENV_ID, **env_kwargs)``) so that
        ``attacker.model.learn(...)`` can continue; the view must list the saved categories.
        """
        MaskablePPO = _maskable_ppo()
        path = Path(path)
        with zipfile.ZipFile(path) as archive:
            if METADATA_FILE not in archive.namelist():
                raise ValueError(f"{path} has no {METADATA_FILE}: it was not written by StrategyAttacker.save")
            meta = json.loads(archive.read(METADATA_FILE))
        if meta["strategies"] != list(STRATEGY_NAMES):
            raise ValueError(
                f"{path} was trained on the strategy menu {meta['strategies']}, which differs from this version's "
                f"{list(STRATEGY_NAMES)}; retrain the attacker"
            )
        view = None
        if env_kwargs is not None:
            view = gymnasium.make(ENV_ID, **dict(env_kwargs))
            if view.unwrapped.categories != meta["categories"]:
                raise ValueError(
                    f"the view's categories {view.unwrapped.categories} differ from the saved model's "
                    f"{meta['categories']}; train on a view with the same scenario categories"
                )
        model = MaskablePPO.load(path, env=view, device="cpu")
        return cls(model, meta["categories"], meta["max_rounds"], deterministic=deterministic)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, view: gymnasium.Env, episodes: int = 200, policy: str = "model", seed: int = 0) -> float:
        """:func:`evaluate` with this attacker (``policy="model"``) or uniform-random (``policy="random"``)."""
        if policy not in ("model", "random"):
            raise ValueError(f"policy must be 'model' or 'random', got {policy!r}")
        return evaluate(view, episodes, policy=self if policy == "model" else "random", seed=seed)


def evaluate(view: gymnasium.Env, episodes: int = 200, policy: StrategyAttacker | str = "random",
             seed: int = 0) -> float:
    """Mean episode reward of ``policy`` on a ``triplay/StrategyAttacker-v0`` view over ``episodes`` episodes.

    Episode ``i`` resets with ``seed + i`` (pick seeds the model did not train on for a held-out score).
    ``policy="random"`` draws uniformly among the actions ``view.action_masks()`` allows, with
    ``numpy.random.default_rng(seed)``. The masks always come from the view.

    The view's Attack Success Pool persists across episodes, so with the diversity penalty on (the triplay
    default) a score depends on what was played before on the same view: compare policies on fresh views,
    or with ``reward_kwargs={"diversity_weight": 0.0}``.

    Worked numbers (triplay scheme, harmful seeds only, no diversity penalty, the default weak defender):
    the mask allows 10 strategies, one of which the defender is weak to, so uniform-random succeeds 1 time
    in 10 and earns about 0.1 * 1 + R_sem (0.5 when the attack stays close to its seed; ~0.47 on average)
    = ~0.57; always playing the weakness earns ~1.45.
    """
    if isinstance(policy, str) and policy != "random":
        raise ValueError(f"policy must be a StrategyAttacker or 'random', got {policy!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    unwrapped = view.unwrapped
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(episodes):
        _, info = view.reset(seed=seed + i)
        done = False
        while not done:
            mask = unwrapped.action_masks()
            if isinstance(policy, str):
                action = int(rng.choice(np.flatnonzero(mask)))
            else:
                action = policy.choose([info], [mask])[0]
            _, reward, terminated, truncated, info = view.step(action)
            total += reward
            done = terminated or truncated
    return total / episodes
