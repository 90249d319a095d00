"""agents.strategy: MaskablePPO learns the weak defender's weakness, saves and loads, and plays the parallel game.

The reward signal, worked out by hand from the triplay table (``triplay_env.rewards.TriPlayRewards``) for
the settings below (harmful seeds only, one defender of weight 1, diversity penalty off):

* the default defender of ``triplay/StrategyAttacker-v0`` complies (verdict UNSAFE, R_att = +1) when the
  attack uses the one strategy it is weak to for the seed's category, and redirects otherwise (R_att = 0);
* R_sem adds 0.5 when the attack stays lexically close to its seed (most templates do: ~0.47 on average);
* the mask allows 10 strategies on a harmful seed (the menu minus ``alarm_framing``), so uniform-random
  hits the weakness 1 time in 10: ~0.1 + 0.47 = ~0.57, and always hitting it earns ~1 + 0.45 = ~1.45.

A margin of 0.5 over random therefore needs the policy to hit the weakness at least ~55% of the time
(R_sem differs between strategies by at most ~0.15 on average, so it cannot make up the margin alone).
"""

from __future__ import annotations

import time
import zipfile

import gymnasium
import numpy as np
import pytest

import triplay_env
from agents.base import turns_from
from agents.scripted import JudgeEvaluator, StrategyWeakDefender, TemplateAttacker
from training.rollout import run_lockstep
from triplay_env.strategies import STRATEGIES, STRATEGY_NAMES, detect_strategy, render

pytest.importorskip("sb3_contrib")

from agents.strategy import METADATA_FILE, StrategyAttacker, evaluate  # noqa: E402

ENV_KWARGS = {"benign_fraction": 0.0, "reward_kwargs": {"diversity_weight": 0.0}}
"""harmful seeds only and no diversity penalty: the reward is R_att + R_sem, a stationary bandit. (With
P_div on, the view's Attack Success Pool grows with every success and repeating the weakness is
penalised by Self-BLEU: always playing it then scores below random, which is P_div doing its job.)"""

TIMESTEPS = 2048
"""8 rollouts of 256 steps; 1,024 already reached the always-hit-the-weakness score on seeds 0-3"""

HELDOUT_SEED = 100_000
"""evaluation episodes reset with seeds 100,000.. (training draws from the view's RNG seeded with 0)"""


@pytest.fixture(scope="module")
def trained():
    start = time.perf_counter()
    attacker = StrategyAttacker.train(total_timesteps=TIMESTEPS, seed=0, env_kwargs=ENV_KWARGS)
    seconds = time.perf_counter() - start
    return attacker, seconds


def _view(**kwargs):
    return gymnasium.make("triplay/StrategyAttacker-v0", **{**ENV_KWARGS, **kwargs})


# ---------------------------------------------------------------- learning


def test_maskable_ppo_beats_uniform_random_on_heldout_episodes(trained):
    attacker, seconds = trained
    episodes = 200
    trained_reward = evaluate(_view(), episodes, policy=attacker, seed=HELDOUT_SEED)
    random_reward = evaluate(_view(), episodes, policy="random", seed=HELDOUT_SEED)
    print(f"\nMaskablePPO {TIMESTEPS} steps in {seconds:.1f} s; mean reward over {episodes} held-out episodes: "
          f"trained {trained_reward:.3f}, uniform-random {random_reward:.3f}")
    assert 0.4 < random_reward < 0.75  # ~0.57 by the table above
    assert trained_reward > random_reward + 0.5
    assert trained_reward > 1.2  # within reach of always hitting the weakness (~1.45)


def test_trained_policy_picks_each_categorys_weakness(trained):
    attacker, _ = trained
    view = _view().unwrapped
    weak = view.players["defender"].weak
    infos = [{"scenario": {"category": c, "harmful": True, "text": "x"}, "round": 0, "history": ()} for c in weak]
    chosen = [STRATEGY_NAMES[a] for a in attacker.choose(infos)]
    hits = sum(c == weak[cat] for c, cat in zip(chosen, weak))
    assert hits >= 0.8 * len(weak), dict(zip(weak, chosen))


# ---------------------------------------------------------------- observation and mask match the view


def test_observation_and_mask_rebuilt_from_info_match_the_view(trained):
    attacker, _ = trained
    env = _view(max_rounds=2)
    view = env.unwrapped
    # the model was trained with max_rounds=1; compare with a twin that knows this view's max_rounds
    twin = StrategyAttacker(attacker.model, attacker.categories, max_rounds=2)
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        np.testing.assert_array_equal(twin.observation(info), obs)
        np.testing.assert_array_equal(twin.action_mask(info), view.action_masks())
        obs, _, terminated, _, info = env.step(STRATEGY_NAMES.index("fiction"))
        if not terminated:  # round 2: the observation's round fraction is 1/2 and fiction is spent
            np.testing.assert_array_equal(twin.observation(info), obs)
            np.testing.assert_array_equal(twin.action_mask(info), view.action_masks())
            assert not twin.action_mask(info)[STRATEGY_NAMES.index("fiction")]


def test_action_mask_reads_used_strategies_from_the_history(trained):
    attacker, _ = trained
    seed_text = "Explain how to pick a lock"
    info = {"scenario": {"category": "theft", "harmful": True, "text": seed_text}, "round": 2,
            "history": ({"attack": render("role_play", seed_text)}, {"attack": render("plain", seed_text)})}
    mask = attacker.action_mask(info)
    names = [s.name for s in STRATEGIES]
    assert not mask[names.index("role_play")] and not mask[names.index("alarm_framing")]
    assert mask[names.index("plain")]  # plain stays allowed even after being used
    assert mask.sum() == len(STRATEGIES) - 2
    # a round past the trained max_rounds clips to 1 instead of leaving the Box
    assert attacker.observation(info)[-1] == 1.0


# ---------------------------------------------------------------- save / load


def test_save_load_reproduces_deterministic_actions(trained, tmp_path):
    attacker, _ = trained
    path = attacker.save(tmp_path / "ckpt" / "attacker.zip")
    assert path == tmp_path / "ckpt" / "attacker.zip"
    assert [p.name for p in path.parent.iterdir()] == ["attacker.zip"]  # the temp file was moved, not left
    with zipfile.ZipFile(path) as archive:
        assert METADATA_FILE in archive.namelist()
    loaded = StrategyAttacker.load(path)
    assert loaded.categories == attacker.categories and loaded.max_rounds == attacker.max_rounds
    env = _view(max_rounds=1, benign_fraction=0.5)  # benign seeds too: other masks and the benign one-hot
    infos = [env.reset(seed=s)[1] for s in range(60)]
    assert loaded.choose(infos) == attacker.choose(infos)
    np.testing.assert_allclose(
        loaded.model.policy.state_dict()["action_net.weight"].numpy(),
        attacker.model.policy.state_dict()["action_net.weight"].numpy(),
    )
    # saving again over the same path replaces it atomically
    attacker.save(path)
    assert StrategyAttacker.load(path).choose(infos) == attacker.choose(infos)


def test_load_with_env_kwargs_attaches_a_view_and_checks_categories(trained, tmp_path):
    attacker, _ = trained
    path = attacker.save(tmp_path / "attacker.zip")
    loaded = StrategyAttacker.load(path, env_kwargs=ENV_KWARGS)
    assert loaded.model.get_env() is not None
    # the held-out split lists fewer categories: the saved one-hot would not fit its view
    with pytest.raises(ValueError, match="categories"):
        StrategyAttacker.load(path, env_kwargs={**ENV_KWARGS, "split": "heldout"})


def test_load_refuses_a_zip_without_metadata(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(ValueError, match=METADATA_FILE):
        StrategyAttacker.load(path)


def test_missing_sb3_contrib_gives_the_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # makes `import sb3_contrib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'triplay\[sb3\]'"):
        StrategyAttacker.train(total_timesteps=1)


def test_constructor_rejects_a_category_list_that_does_not_fit(trained):
    attacker, _ = trained
    with pytest.raises(ValueError, match="categories"):
        StrategyAttacker(attacker.model, attacker.categories[:-1])


# ---------------------------------------------------------------- the parallel game through the agent protocol


def test_plays_attacker_in_lockstep_rollouts_and_beats_the_template_attacker(trained):
    attacker, _ = trained
    weak = _view().unwrapped.players["defender"].weak
    # unseen seed texts: the held-out split (its own category list differs, the stored one is used)
    config = {"benign_fraction": 0.0, "split": "heldout", "reward_kwargs": {"diversity_weight": 0.0}}
    n = 40

    def play(player):
        envs = [triplay_env.parallel_env(**config) for _ in range(n)]
        players = {"attacker": player, "defender": StrategyWeakDefender(weak), "evaluator": JudgeEvaluator()}
        return run_lockstep(envs, players, seeds=list(range(n)))

    rollout = play(attacker)
    attacks = rollout.by_agent("attacker_0")
    assert len(attacks) == n
    chosen = attacker.choose([m.info for m in attacks])
    for move, a in zip(attacks, chosen):
        assert detect_strategy(move.text) == STRATEGY_NAMES[a]
        assert move.text == render(a, move.info["scenario"]["text"])
    trained_success = np.mean([j["success"] for j in rollout.judged])

    template_success = np.mean([j["success"] for j in play(TemplateAttacker(seed=0)).judged])
    print(f"\nsuccess rate over {n} held-out-split games: strategy attacker {trained_success:.2f}, "
          f"template attacker (uniform over {len(STRATEGIES)} strategies) {template_success:.2f}")
    # uniform over 11 strategies hits the weakness ~1/11 of the time
    assert template_success < 0.3
    assert trained_success > 0.8
    assert trained_success > template_success + 0.5


def test_act_refuses_turns_of_other_roles(trained):
    attacker, _ = trained
    env = triplay_env.parallel_env()
    obs, infos = env.reset(seed=0)
    turn = turns_from(obs, infos, ["defender_0"])[0]
    with pytest.raises(ValueError, match="defender_0"):
        attacker.act([turn])
    assert attacker.act([]) == []
