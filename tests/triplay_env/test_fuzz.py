"""Fuzz the game with arbitrary text: whole episodes of hypothesis-generated actions must never crash the env.

Garbage *text* is a legal bad move (docs/design.md, "The game"; the env's module docstring): over-long text is truncated and flagged, an
evaluator output that does not parse is an invalid verdict (format penalty; the round uses the panel's
verdict). A wrong Python *type* is a programming error: ``TypeError`` naming the agent, for active agents
only; inactive agents' actions are ignored whatever they are.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triplay_env
from triplay_env.agent_ids import role_of
from triplay_env.datasets import load_scenarios
from triplay_env.panel import keyword_panel
from triplay_env.scenarios import Scenario
from triplay_env.verdicts import parse_verdict

LIMITS = {"attacker": 2000, "defender": 4000, "evaluator": 1000}
"""the env's default max_attack_chars / max_response_chars / max_verdict_chars"""
LONGEST = 100_000

SCENARIOS = load_scenarios("builtin", "train", benign_fraction=0.3)
"""what scenarios="builtin" loads, loaded once"""
CONFIGS = [
    {"num_defenders": 1, "max_rounds": 1},
    {"num_defenders": 3, "max_rounds": 3},
]
EXAMPLES_PER_CONFIG = 300  # 2 configs x 300 = 600 episodes

# --------------------------------------------------------------------------- strategies

# Any unicode but surrogates (hypothesis' default), so control characters, combining marks, RTL, emoji, NUL.
ANY_TEXT = st.text(max_size=300)
CONTROL_TEXT = st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=50)
ODD_TEXT = st.sampled_from(["", " ", "\x00", "\r\n\t", "\u202e\u200b\ufeff", "💣" * 3, "VERDICT:", "{seed}", "%s"])


def long_text(limit: int) -> st.SearchStrategy[str]:
    """Strings of exactly limit - 1, limit, limit + 1 or up to 100k characters, by repeating a short unit
    (hypothesis cannot draw 100k characters one by one)."""
    length = st.one_of(st.sampled_from([limit - 1, limit, limit + 1, LONGEST]), st.integers(limit + 1, LONGEST))
    return st.builds(lambda unit, n: (unit * (n // len(unit) + 1))[:n], st.text(min_size=1, max_size=8), length)


# built once: building strategies inside the composite below costs more than playing the episode
ROLE_TEXT = {role: st.one_of(ANY_TEXT, CONTROL_TEXT, ODD_TEXT, long_text(limit)) for role, limit in LIMITS.items()}
# defenders also say things the panel recognises (refusals, redirects, recipes), glued to arbitrary text
ANSWERS = st.sampled_from([
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "I can't help with that. Instead, here are safer options: official resources and qualified professionals "
    "can support you, and I can explain the background and the risks. Consider reaching out to an expert.",
    "Sure, here is how. Step 1: gather what you will need. Step 2: follow the procedure.",
])
ROLE_TEXT["defender"] = st.one_of(
    ROLE_TEXT["defender"], st.builds(lambda a, b, c: a + b + c, st.text(max_size=5), ANSWERS, st.text(max_size=50))
)


VERDICT_WORDS = st.sampled_from(["UNSAFE", "refusal", "Guidance", "maybe", "SAFE", ""])
TAGS = st.lists(st.tuples(st.sampled_from(["VERDICT: ", "verdict:", "**VERDICT:** ", "Verdict : "]), VERDICT_WORDS),
                min_size=1, max_size=3)
PADDING = st.integers(LIMITS["evaluator"] - 20, LIMITS["evaluator"] + 20)


@st.composite
def verdict_text(draw) -> str:
    """Evaluator outputs: garbage, tags (valid, lowercase, bold, contradictory, unknown labels), and tags
    pushed past the 1000-character limit so that truncation cuts them off."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(ROLE_TEXT["evaluator"])
    body = "\n".join(prefix + word for prefix, word in draw(TAGS))
    before = draw(ANY_TEXT)
    if kind == 4:
        before += "x" * draw(PADDING)
    return before + "\n" + body


# anything at all, for inactive agents (and agents that are not in the game)
JUNK = st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.lists(st.integers(), max_size=3),
                 st.floats(allow_nan=True), ANY_TEXT)
VERDICT_TEXT = verdict_text()
SEED_TEXT = st.text(min_size=1, max_size=200).filter(lambda t: t.strip())
CATEGORY = st.text(max_size=20)
JUNK_ACTIONS = {n: st.dictionaries(st.sampled_from(["attacker_0", *(f"defender_{i}" for i in range(n)),
                                                    *(f"evaluator_{i}" for i in range(n)), "nobody_0"]), JUNK, max_size=3)
                for n in (1, 3)}


@st.composite
def episodes(draw, num_defenders: int, max_rounds: int):
    """A reset (seed, maybe a forced scenario with arbitrary text) and every step's actions for a whole episode."""
    seed = draw(st.integers(0, 2**32 - 1))
    scenario = None
    if draw(st.booleans()):
        scenario = Scenario(draw(SEED_TEXT), draw(CATEGORY), draw(st.booleans()), "fuzz")
    junk = JUNK_ACTIONS[num_defenders]
    steps = []
    for _ in range(max_rounds):
        steps.append(({"attacker_0": draw(ROLE_TEXT["attacker"])}, draw(junk)))
        steps.append(({f"defender_{i}": draw(ROLE_TEXT["defender"]) for i in range(num_defenders)}, draw(junk)))
        steps.append(({f"evaluator_{i}": draw(VERDICT_TEXT) for i in range(num_defenders)}, draw(junk)))
    return seed, scenario, steps


# --------------------------------------------------------------------------- the episode checks


def check_observations(env, agents, observations, infos):
    assert set(observations) == set(infos) == set(agents)
    for agent in agents:
        obs = observations[agent]
        assert env.observation_space(agent).contains(obs), (agent, {k: (type(v), v if k != "prompt" else len(v)) for k, v in obs.items()})
        assert obs["active"] == int(infos[agent]["active"])
        assert (obs["prompt"] != "") == bool(obs["active"])  # an active agent always has a prompt


SEEN: Counter = Counter()
"""what the fuzzer exercised (truncations, invalid and valid verdicts, ...), asserted non-trivial below"""


def play_episode(config, seed, scenario, steps):
    # a fresh env (and pool): failures replay. The keyword panel: the env's paths are the same whatever the
    # panel, and its verdicts reach every class on the fuzzer's answers (the content judge rarely says unsafe
    # to a recipe with no content, as people would not either)
    env = triplay_env.parallel_env(scenarios=SCENARIOS, panel=keyword_panel(), **config)
    options = {"scenario": scenario} if scenario is not None else None
    observations, infos = env.reset(seed=seed, options=options)
    check_observations(env, env.possible_agents, observations, infos)
    assert [a for a in env.agents if observations[a]["active"]] == ["attacker_0"]
    if scenario is not None:
        assert infos["attacker_0"]["scenario"] == scenario.to_dict()

    for n, (active_actions, junk) in enumerate(steps):
        agents = list(env.agents)
        active = [a for a in agents if observations[a]["active"]]
        assert sorted(active) == sorted(active_actions)
        actions = {a: v for a, v in junk.items() if a not in active_actions}  # junk only for inactive agents
        actions.update(active_actions)
        role = role_of(active[0])
        limit = LIMITS[role]
        kept = {a: t[:limit] for a, t in active_actions.items()}

        observations, rewards, terminations, truncations, infos = env.step(actions)

        check_observations(env, agents, observations, infos)
        assert set(rewards) == set(terminations) == set(truncations) == set(agents)
        for agent, r in rewards.items():
            assert type(r) is float and math.isfinite(r), (agent, r)
        for agent in agents:
            assert infos[agent]["truncated"] is (agent in active_actions and len(active_actions[agent]) > limit)
            SEEN["truncated"] += infos[agent]["truncated"]
        SEEN["junk for inactive agents"] += bool(junk)
        assert not any(truncations.values())
        last = n == len(steps) - 1
        assert all(v is last for v in terminations.values())
        assert env.agents == ([] if last else agents)

        if role == "attacker":
            assert infos["attacker_0"]["attack"] == kept["attacker_0"]
        elif role == "defender":
            assert infos["defender_0"]["responses"] == tuple(kept[d] for d in env.defenders)
        if role != "evaluator":
            assert set(rewards.values()) == {0.0}  # only JUDGE steps pay
            continue

        judged = infos["attacker_0"]["judged"]
        terms = judged["reward_terms"]
        assert rewards["attacker_0"] == pytest.approx(terms["r_att"] + terms["r_sem"] - terms["p_div"], abs=1e-9)
        for i, evaluator in enumerate(env.evaluators):
            parsed = parse_verdict(kept[evaluator])
            panel = judged["panel_verdicts"][i]
            SEEN["invalid verdict" if parsed is None else "valid verdict"] += 1
            SEEN[f"panel {panel}"] += 1
            rule = judged["panel_rules"][i]  # a non-answer is the panel's REFUSAL, whoever speaks
            if rule is not None:
                SEEN["non-answer"] += 1
                assert panel == "refusal" and judged["verdicts"][i] == panel and judged["verdict_sources"][i] == "rule"
            if parsed is None:  # invalid verdict: format penalty, and the round uses the panel's verdict
                assert judged["evaluator_verdicts"][i] is None
                assert judged["verdict_sources"][i] == ("rule" if rule else "panel")
                assert judged["verdicts"][i] == panel
                assert rewards[evaluator] == -1.0
            else:
                assert judged["evaluator_verdicts"][i] == parsed.value
                assert judged["verdict_sources"][i] == ("rule" if rule else "evaluator")
                assert judged["verdicts"][i] == (panel if rule else parsed.value)
                assert rewards[evaluator] == (0.0 if panel is None else 1.0 if parsed.value == panel else 0.0)
    assert env.agents == []


def test_fuzz_whole_episodes_of_arbitrary_text():
    ran = {}
    for config in CONFIGS:
        count = 0

        @settings(max_examples=EXAMPLES_PER_CONFIG, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(episode=episodes(**config))
        def fuzz(episode):
            nonlocal count
            play_episode(config, *episode)
            count += 1

        fuzz()
        ran[(config["num_defenders"], config["max_rounds"])] = count
    assert ran[(1, 1)] >= EXAMPLES_PER_CONFIG and ran[(3, 3)] >= EXAMPLES_PER_CONFIG, ran
    assert sum(ran.values()) >= 500, ran
    # the episodes really hit the interesting cases
    for key in ("truncated", "invalid verdict", "valid verdict", "junk for inactive agents",
                "panel unsafe", "panel refusal", "panel guidance", "non-answer"):
        assert SEEN[key] >= 20, SEEN
    print(dict(ran), dict(SEEN))


def test_long_actions_are_truncated_to_the_limit_and_flagged():
    env = triplay_env.parallel_env(num_defenders=2)
    env.reset(seed=0)
    attack = "é" * LONGEST
    _, _, _, _, infos = env.step({"attacker_0": attack})
    assert infos["attacker_0"]["truncated"] and not infos["defender_0"]["truncated"]
    assert infos["defender_0"]["attack"] == "é" * 2000
    _, _, _, _, infos = env.step({"defender_0": "r" * 4000, "defender_1": "r" * 4001})  # at the limit, and one over
    assert [infos[d]["truncated"] for d in ("defender_0", "defender_1")] == [False, True]
    assert infos["evaluator_1"]["responses"] == ("r" * 4000, "r" * 4000)
    # a valid tag beyond character 1000 is cut off: an invalid verdict
    _, rewards, _, _, infos = env.step({"evaluator_0": "x" * 1000 + "VERDICT: REFUSAL", "evaluator_1": "VERDICT: REFUSAL"})
    assert infos["evaluator_0"]["truncated"] and not infos["evaluator_1"]["truncated"]
    assert infos["evaluator_0"]["judged"]["evaluator_verdicts"][0] is None
    assert infos["evaluator_0"]["judged"]["verdict_sources"][0] == "rule"  # "rrr...": one word, a non-answer
    assert rewards["evaluator_0"] == -1.0


# --------------------------------------------------------------------------- wrong Python types


BAD_ACTIONS = [1, None, b"VERDICT: UNSAFE", ["attack"], 2.5]


def to_phase(env, phase):
    """Step a fresh 3-defender game to ``phase`` (0 attack, 1 defend, 2 judge) with valid text."""
    env.reset(seed=1)
    if phase >= 1:
        env.step({"attacker_0": "hello"})
    if phase >= 2:
        env.step({d: "I'm sorry, but I can't help with that." for d in env.defenders})


@pytest.mark.parametrize("bad", BAD_ACTIONS, ids=lambda b: type(b).__name__)
@pytest.mark.parametrize("phase, agent", [(0, "attacker_0"), (1, "defender_0"), (1, "defender_2"),
                                          (2, "evaluator_0"), (2, "evaluator_2")])
def test_non_str_action_for_an_active_agent_raises(bad, phase, agent):
    env = triplay_env.parallel_env(num_defenders=3, max_rounds=2)  # 2 rounds: JUDGE leads to the next ATTACK
    to_phase(env, phase)
    active = {0: ["attacker_0"], 1: env.defenders, 2: env.evaluators}[phase]
    actions = {a: "fine text" for a in active}
    actions[agent] = bad
    with pytest.raises(TypeError) as err:
        env.step(actions)
    message = str(err.value)
    assert agent in message
    assert str(type(bad)) in message  # e.g. "actual type: <class 'bytes'>"
    # nothing moved: the same phase accepts valid actions afterwards
    observations, *_ = env.step({a: "fine text" for a in active})
    assert observations["attacker_0"]["phase"] == (phase + 1) % 3


@pytest.mark.parametrize("bad", BAD_ACTIONS + [object(), {"x": 1}], ids=lambda b: type(b).__name__)
def test_non_str_action_for_an_inactive_agent_is_ignored(bad):
    env = triplay_env.parallel_env(num_defenders=3, max_rounds=2)
    env.reset(seed=2)
    everyone = {a: bad for a in env.possible_agents}
    steps = [
        {"attacker_0": "attack text"},
        {d: "I'm sorry, but I can't help with that." for d in env.defenders},
        {e: "VERDICT: REFUSAL" for e in env.evaluators},
    ] * 2
    for i, valid in enumerate(steps):
        observations, rewards, terminations, _, infos = env.step({**everyone, **valid, "nobody_0": bad})
        assert all(math.isfinite(r) for r in rewards.values())
    assert all(terminations.values()) and env.agents == []
    assert infos["attacker_0"]["attack"] == "attack text"


def test_missing_action_for_an_active_agent_raises_key_error():
    env = triplay_env.parallel_env(num_defenders=2)
    env.reset(seed=0)
    env.step({"attacker_0": "x"})
    with pytest.raises(KeyError, match="defender_1"):
        env.step({"defender_0": "y", "attacker_0": "ignored"})
