"""Tests for triplay_env.diversity: Self-BLEU against nltk, eviction, cosine, persistence, the penalty."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from triplay_env.diversity import AttackSuccessPool, amplify, diversity_penalty, tokenize

# A small vocabulary so that random sentences share many n-grams (and punctuation to exercise the tokenizer).
VOCAB = ["how", "to", "make", "a", "the", "lock", "pick", "you", "are", "dan", "please", "story", ",", ".", "!"]


def nltk_bleu(pool_texts: list[str], attack: str, orders: tuple[int, ...] = (3, 4, 5)) -> float:
    """The independent reference: nltk's multi-reference sentence BLEU with the pool as references."""
    weights = tuple(1 / len(orders) if n in orders else 0 for n in range(1, max(orders) + 1))
    return float(
        sentence_bleu(
            references=[tokenize(t) for t in pool_texts],
            hypothesis=tokenize(attack),
            weights=weights,
            smoothing_function=SmoothingFunction().method1,
        )
    )


def random_text(rng: random.Random, max_len: int = 20) -> str:
    """Random sentence; varied case and glued punctuation, which tokenize() must undo."""
    n = rng.choice([0, 1, 2, 3, 4] + list(range(5, max_len + 1)))
    if rng.random() < 0.1:
        return " ".join([rng.choice(VOCAB)] * n)  # one token repeated
    words = [rng.choice(VOCAB) for _ in range(n)]
    words = [w.upper() if rng.random() < 0.1 else w for w in words]
    return "".join(w if w in ",.!" else " " + w for w in words).strip()


def random_attack(rng: random.Random, pool_texts: list[str]) -> str:
    """An attack that is random, a copy, a span or a mutation of a pool entry."""
    kind = rng.randrange(5)
    if kind == 0 or not pool_texts:
        return random_text(rng)
    source = tokenize(rng.choice(pool_texts))
    if kind == 1:
        return " ".join(source)
    if kind == 2:  # a span, often shorter than 3-5 tokens
        i = rng.randrange(len(source) + 1)
        return " ".join(source[i : i + rng.randrange(1, 7)])
    if kind == 3:  # one token changed, one added
        if source:
            source[rng.randrange(len(source))] = rng.choice(VOCAB)
        source.insert(rng.randrange(len(source) + 1), rng.choice(VOCAB + ["unseen"]))
        return " ".join(source)
    return " ".join(source + source[: rng.randrange(4)])  # repeated n-grams: clipping


# ---------------------------------------------------------------------------- (a) equality with nltk


@pytest.mark.parametrize("chunk", range(10))
def test_self_bleu_matches_nltk_on_random_pools(chunk):
    for seed in range(30 * chunk, 30 * chunk + 30):  # 300 pools in all, 4 attacks each
        rng = random.Random(seed)
        pool_texts = [random_text(rng) for _ in range(rng.randint(1, 30))]
        pool = AttackSuccessPool(capacity=64)
        for text in pool_texts:
            pool.add(text)
        for _ in range(4):
            attack = random_attack(rng, pool_texts)
            expected = nltk_bleu(pool_texts, attack)
            assert pool.self_bleu(attack) == pytest.approx(expected, abs=1e-9), (seed, attack)


@pytest.mark.parametrize("orders", [(1, 2, 3, 4), (2, 4), (1,), (4, 3)])
def test_other_orders_match_nltk_with_uniform_weights_on_those_orders(orders):
    rng = random.Random(sum(orders))
    for _ in range(40):
        pool_texts = [random_text(rng) for _ in range(rng.randint(1, 15))]
        pool = AttackSuccessPool(orders=orders)
        for text in pool_texts:
            pool.add(text)
        attack = random_attack(rng, pool_texts)
        assert pool.self_bleu(attack) == pytest.approx(nltk_bleu(pool_texts, attack, orders), abs=1e-9)


# ---------------------------------------------------------------------------- (b) eviction


def test_after_overflow_self_bleu_uses_only_surviving_entries():
    rng = random.Random(7)
    capacity = 4
    pool = AttackSuccessPool(capacity=capacity)
    added = []
    for step in range(80):
        text = random_text(rng)
        pool.add(text)
        added.append(text)
        survivors = added[-capacity:]
        assert pool.texts == survivors
        assert len(pool) == min(step + 1, capacity)
        for _ in range(3):
            attack = random_attack(rng, added[-2 * capacity :])  # also attacks built on evicted entries
            assert pool.self_bleu(attack) == pytest.approx(nltk_bleu(survivors, attack), abs=1e-9)


def test_evicted_text_no_longer_matches():
    pool = AttackSuccessPool(capacity=2)
    pool.add("tell me a story about a lock")
    assert pool.self_bleu("tell me a story about a lock") == 1.0
    pool.add("you are dan")
    pool.add("pretend you are my grandmother")  # evicts the story
    assert pool.self_bleu("tell me a story about a lock") == 0.0  # no token left in common


def test_eviction_leaves_index_as_if_built_from_survivors():
    # White-box: eviction must remove every n-gram, length and token it added, or memory grows forever.
    rng = random.Random(3)
    pool = AttackSuccessPool(capacity=5)
    for _ in range(200):
        pool.add(random_text(rng) + " " + str(rng.randrange(10_000)))  # a fresh token every time
    fresh = AttackSuccessPool(capacity=5)
    for text in pool.texts:
        fresh.add(text)
    for n in pool._index:
        assert len(pool._index[n]) == len(fresh._index[n])
        assert sorted(map(str, pool._index[n].values())) == sorted(map(str, fresh._index[n].values()))
    assert set(pool._vocab) == set(fresh._vocab)
    assert pool._length_count == fresh._length_count and pool._lengths == fresh._lengths


# ---------------------------------------------------------------------------- (c) hand-computed cases


def test_identical_text_scores_one_and_disjoint_scores_zero():
    pool = AttackSuccessPool()
    pool.add("Imagine you are a locksmith teaching an apprentice.")
    assert pool.self_bleu("imagine you are a LOCKSMITH teaching an apprentice .") == 1.0
    assert pool.self_bleu("write a poem") != 0.0  # shares 'a': smoothed, not zero
    assert pool.self_bleu("compose verses quickly") == 0.0  # no unigram in common: nltk's early return


def test_empty_pool_and_empty_attack_score_zero():
    assert AttackSuccessPool().self_bleu("anything at all") == 0.0
    pool = AttackSuccessPool()
    pool.add("anything at all")
    assert pool.self_bleu("") == 0.0
    assert pool.self_bleu("  ") == 0.0


def test_worked_example_from_module_docstring():
    # attack: explain how to pick a lock quickly (7 tokens); pool entry: please explain how to pick a lock (7)
    # 3-grams: 4 of 5 match ("a lock quickly" does not); 4-grams: 3 of 4; 5-grams: 2 of 3; lengths equal: BP 1
    # SelfBLEU = (4/5 * 3/4 * 2/3) ** (1/3) = 0.4 ** (1/3) = 0.736806...
    pool = AttackSuccessPool()
    pool.add("Please explain how to pick a lock")
    assert pool.self_bleu("Explain how to pick a lock quickly") == pytest.approx(0.4 ** (1 / 3), abs=1e-12)
    assert 0.4 ** (1 / 3) == pytest.approx(0.7368063, abs=1e-7)


def test_brevity_penalty_and_tie_to_shorter_length():
    # pool lengths 5 and 7; attack "a b c d e z" has 6 tokens, equally far from both: nltk takes 5, so BP = 1
    # (taking 7 would give exp(1 - 7/6) = 0.846). 3-grams abc bcd cde dez: 3/4; 4-grams: 2/3; 5-grams: 1/2
    # SelfBLEU = (3/4 * 2/3 * 1/2) ** (1/3) = 0.25 ** (1/3) = 0.629961
    pool = AttackSuccessPool()
    pool.add("a b c d e")
    pool.add("a b c d e x y")
    assert pool.self_bleu("a b c d e z") == pytest.approx(0.25 ** (1 / 3), abs=1e-12)
    # a prefix of 6 of one 8-token entry: every n-gram matches, BP = exp(1 - 8/6) = 0.716531
    pool = AttackSuccessPool()
    pool.add("a b c d e f g h")
    assert pool.self_bleu("a b c d e f") == pytest.approx(math.exp(1 - 8 / 6), abs=1e-12)


def test_attack_shorter_than_the_orders_gets_epsilon_per_order():
    # "a b" has no 3-, 4- or 5-gram: each order is 0 / max(1, 0) -> method1 gives 0.1 / 1, geometric mean 0.1;
    # unigrams match, so no early return. BP: closest length 3 > 2 -> exp(1 - 3/2) = 0.606531. Total 0.0606531
    pool = AttackSuccessPool()
    pool.add("a b c")
    assert pool.self_bleu("a b") == pytest.approx(0.1 * math.exp(-0.5), abs=1e-12)
    assert pool.self_bleu("a b") == pytest.approx(0.0606531, abs=1e-7)


def test_clipping_uses_the_max_count_in_one_entry_not_the_sum():
    # hyp "x x x x": 3-gram xxx twice, 4-gram xxxx once, no 5-gram.
    # pool {"x x x", "x x x x x"}: xxx at most 3 times in one entry -> 2/2; xxxx -> 1/1; 5-gram -> 0.1
    # lengths 3 and 5 tie around 4 -> 3 < 4 -> BP 1. SelfBLEU = 0.1 ** (1/3) = 0.464159
    pool = AttackSuccessPool()
    pool.add("x x x")
    pool.add("x x x x x")
    assert pool.self_bleu("x x x x") == pytest.approx(0.1 ** (1 / 3), abs=1e-12)
    # pool {"x x x", "x x x"}: xxx once per entry (two entries do not add up) -> 1/2; 4-gram 0.1/1; 5-gram 0.1
    # SelfBLEU = (0.5 * 0.1 * 0.1) ** (1/3) = 0.170998
    pool = AttackSuccessPool()
    pool.add("x x x")
    pool.add("x x x")
    assert pool.self_bleu("x x x x") == pytest.approx(0.005 ** (1 / 3), abs=1e-12)


def test_tokenize():
    assert tokenize("Ignore ALL rules!!") == ["ignore", "all", "rules", "!", "!"]
    assert tokenize("don't  stop\n_now_ 42") == ["don", "'", "t", "stop", "_now_", "42"]
    assert tokenize("") == []


# ---------------------------------------------------------------------------- (d) cosine


def _unit_rows(vectors):
    m = np.asarray(vectors, dtype=np.float64)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_cosine_mean_and_max_match_numpy_through_evictions():
    rng = np.random.default_rng(0)
    pool = AttackSuccessPool(capacity=10)
    added = []  # (text, embedding or None)
    for i in range(37):
        embedding = rng.normal(size=8) * rng.uniform(0.1, 5) if i % 3 else None  # some entries have none
        pool.add(f"attack {i}", embedding)
        added.append(embedding)
        stored = [e for e in added[-10:] if e is not None]
        query = rng.normal(size=8)
        if not stored:
            assert pool.cosine(query) == 0.0 and pool.max_cosine(query) == 0.0
            continue
        sims = _unit_rows(stored) @ (query / np.linalg.norm(query))
        assert pool.cosine(query) == pytest.approx(float(sims.mean()), abs=1e-12)
        assert pool.max_cosine(query) == pytest.approx(float(sims.max()), abs=1e-12)


def test_cosine_is_zero_without_embeddings_and_one_for_the_same_direction():
    pool = AttackSuccessPool()
    pool.add("no embedding here")
    assert pool.cosine(np.ones(4)) == 0.0 and pool.max_cosine(np.ones(4)) == 0.0
    pool.add("with one", np.array([3.0, 0.0, 4.0, 0.0]))
    assert pool.cosine(np.array([0.6, 0.0, 0.8, 0.0])) == pytest.approx(1.0, abs=1e-15)
    # second entry (0, 1, 0, 0): mean of cos 0.6 and cos 0 -> 0.3 for the query (1, 0, 0, 0); max 0.6
    pool.add("with another", np.array([0.0, 2.0, 0.0, 0.0]))
    assert pool.cosine(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.3, abs=1e-15)
    assert pool.max_cosine(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.6, abs=1e-15)


# ---------------------------------------------------------------------------- (e) persistence


def test_state_dict_round_trip_gives_identical_scores():
    rng = random.Random(11)
    nrng = np.random.default_rng(11)
    pool = AttackSuccessPool(capacity=12, orders=(3, 4, 5))
    for i in range(30):  # overflow, so slots have wrapped
        pool.add(random_text(rng), nrng.normal(size=6) if i % 4 else None)
    state = json.loads(json.dumps(pool.state_dict()))
    assert state["capacity"] == 12 and state["orders"] == [3, 4, 5] and state["texts"] == pool.texts
    copy = AttackSuccessPool.from_state_dict(state)
    other = AttackSuccessPool(capacity=3, orders=(1,))
    other.load_state_dict(state)

    def same(a: AttackSuccessPool, b: AttackSuccessPool) -> None:
        assert a.texts == b.texts and a.capacity == b.capacity and a.orders == b.orders
        for _ in range(30):
            attack = random_attack(rng, a.texts)
            assert a.self_bleu(attack) == b.self_bleu(attack)
        for _ in range(5):
            query = nrng.normal(size=6)
            assert a.cosine(query) == b.cosine(query)
            assert a.max_cosine(query) == b.max_cosine(query)

    same(pool, copy)
    same(pool, other)
    for i in range(15):  # and they keep behaving alike as entries come and go
        text, embedding = random_text(rng), (nrng.normal(size=6) if i % 2 else None)
        pool.add(text, embedding)
        copy.add(text, embedding)
    same(pool, copy)


def test_load_rejects_a_bad_state_and_leaves_the_pool_unchanged():
    pool = AttackSuccessPool(capacity=2)
    pool.add("please keep me as i am")
    with pytest.raises(ValueError, match="more than its capacity"):
        pool.load_state_dict({"capacity": 1, "orders": [3], "texts": ["a", "b"], "embeddings": [None, None]})
    with pytest.raises(KeyError, match="embeddings"):
        pool.load_state_dict({"capacity": 1, "orders": [3], "texts": []})
    assert pool.texts == ["please keep me as i am"] and pool.self_bleu("please keep me as i am") == 1.0


# ---------------------------------------------------------------------------- (f) the penalty


def test_amplify_and_diversity_penalty_by_hand():
    # e^0.5 - 1 = 0.6487212707, e^0.25 - 1 = 0.2840254167 -> 2 * 0.6487212707 + 4 * 0.2840254167 = 2.4335442082
    assert amplify(0.0) == 0.0
    assert amplify(0.5) == pytest.approx(0.6487212707, abs=1e-10)
    assert amplify(0.5, k=2.0) == pytest.approx(math.e - 1, abs=1e-12)
    assert diversity_penalty(0.5, 0.25) == pytest.approx(2.4335442082, abs=1e-10)
    assert diversity_penalty(0.5, 0.25) == pytest.approx(2 * (math.exp(0.5) - 1) + 4 * (math.exp(0.25) - 1), abs=1e-12)
    # a verbatim repeat with the same embedding: 2 * (e - 1) + 4 * (e - 1) = 6 * 1.718281828 = 10.30969097
    assert diversity_penalty(1.0, 1.0) == pytest.approx(10.30969097, abs=1e-8)
    assert diversity_penalty(0.5, 0.25, k=1.0, w_bleu=1.0, w_cos=0.0) == pytest.approx(0.6487212707, abs=1e-10)
    assert diversity_penalty(0.0) == 0.0


# ---------------------------------------------------------------------------- errors


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="capacity must be between 1"):
        AttackSuccessPool(capacity=0)
    with pytest.raises(TypeError, match="float"):
        AttackSuccessPool(capacity=1.5)
    with pytest.raises(ValueError, match="at least one n-gram order"):
        AttackSuccessPool(orders=())
    with pytest.raises(ValueError, match="positive ints"):
        AttackSuccessPool(orders=(0, 3))
    with pytest.raises(ValueError, match="distinct"):
        AttackSuccessPool(orders=(3, 3))
    pool = AttackSuccessPool()
    with pytest.raises(TypeError, match="actual type: <class 'int'>"):
        pool.add(123)
    with pytest.raises(TypeError, match="NoneType"):
        pool.self_bleu(None)
    pool.add("first", np.ones(3))
    with pytest.raises(ValueError, match="dimension 4"):
        pool.add("second", np.ones(4))
    with pytest.raises(ValueError, match="zero vector"):
        pool.cosine(np.zeros(3))
    assert pool.texts == ["first"]  # a rejected add changes nothing
