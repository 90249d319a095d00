"""RoleBaseline does what its docstring says: one update per batch, the decay's two ends, what it refuses."""

from __future__ import annotations

import pytest
import torch

from training.grpo import RoleBaseline


def test_one_update_per_batch_with_the_batch_mean():
    rb = RoleBaseline(decay=0.5)
    # every sample of the batch is baselined by the same 0 (not 0, then .5 * 0 + .5 * 4 = 2, ...)
    assert rb.advantages("attacker", torch.tensor([4.0, 0.0, 2.0])).tolist() == [4.0, 0.0, 2.0]
    assert rb.value("attacker") == 1.0  # .5 * 0 + .5 * mean(4, 0, 2) = .5 * 2, one update


def test_decay_one_keeps_init_and_decay_zero_follows_the_last_batch():
    frozen, follower = RoleBaseline(decay=1.0, init=0.25), RoleBaseline(decay=0.0, init=0.25)
    for batch in ([1.0, 3.0], [-1.0, 0.0]):
        frozen.update("defender", torch.tensor(batch))
        follower.update("defender", torch.tensor(batch))
    assert frozen.value("defender") == 0.25  # 1 * .25 + 0 * mean, twice
    assert follower.value("defender") == -0.5  # 0 * old + 1 * mean(-1, 0)
    assert follower.advantages("defender", torch.tensor([0.5])).tolist() == [1.0]  # .5 - (-.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"decay": True}, r"decay must be a number in \[0, 1\].*decay=True"),
    ({"decay": -0.1}, r"decay=-0.1"),
    ({"init": float("nan")}, r"init must be a finite number.*init=nan"),
    ({"init": "0"}, r"init must be a finite number.*init='0'"),
])
def test_bad_decay_or_init_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoleBaseline(**kwargs)
