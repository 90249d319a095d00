"""Adapters that let other trainers train a TriPlay role; each is a thin layer over the PettingZoo env.

| module | trainer | how |
|---|---|---|
| :mod:`training.integrations.trl` | TRL's ``GRPOTrainer`` (``pip install -e '.[trl]'``) | a ``rollout_func`` that plays one role with the trainer's model, the others with TriPlay agents; a reward function that returns the game's reward |

Each adapter lives in its own module and imports its trainer lazily, so ``import training.integrations`` costs
nothing and works without any of them installed. OpenEnv and verifiers adapters are not written yet.
"""
