"""Logged propensities must be the exact probabilities of the logged actions: checked against empirical frequencies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reagent_recsys.config import ConfigError, LoggingConfig
from reagent_recsys.policies import build_policy, sample_categorical

B, N = 40_000, 5

POLICIES = {
    "random": {"type": "random"},
    "greedy_max": {"type": "greedy", "direction": "max"},
    "greedy_min": {"type": "greedy", "direction": "min"},
    "softmax": {"type": "softmax", "direction": "max", "temperature": 0.2},
    "epsilon_greedy": {"type": "epsilon_greedy", "epsilon": 0.3, "expert": {"direction": "min"}},
    "mixture": {"type": "mixture", "components": [
        {"weight": 0.2, "policy": {"type": "greedy"}},
        {"weight": 0.8, "policy": {"type": "random"}},
    ]},
}
FULL_SUPPORT = ("random", "softmax", "epsilon_greedy", "mixture")


def policy_from(raw: dict, slate_size: int = 1):
    return build_policy(LoggingConfig(policy=raw).policy, slate_size=slate_size)


def doc_features(rng: np.random.Generator, b: int = B, n: int = N) -> dict[str, np.ndarray]:
    return {"clickbait": rng.random((b, n))}


@pytest.mark.parametrize("name", list(POLICIES))
def test_frequencies_match_probabilities_and_propensity_is_exact(name):
    rng = np.random.default_rng(1)
    policy = policy_from(POLICIES[name], slate_size=3)
    policy.begin_episodes(B, rng)
    docs = doc_features(rng)
    probs = policy.probabilities(docs)  # (B, N)
    assert probs.shape == (B, N)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    slates, propensity = policy.act(docs, rng)
    actions = slates[:, 0]
    assert slates.shape == (B, 3) and slates.dtype == np.int64 and propensity.dtype == np.float64
    assert all(len(set(row)) == 3 for row in slates[:100].tolist())
    np.testing.assert_array_equal(propensity, probs[np.arange(B), actions])
    assert (propensity > 0).all()
    # Count of each slot ~ sum of independent Bernoulli(p_b(j)): 5-sigma bounds.
    counts = np.bincount(actions, minlength=N)
    expected = probs.sum(axis=0)
    sd = np.sqrt((probs * (1 - probs)).sum(axis=0))
    assert (np.abs(counts - expected) <= 5 * sd + 1).all(), (name, counts, expected)


@pytest.mark.parametrize("name", FULL_SUPPORT)
def test_importance_weights_are_unbiased(name):
    """E[1{a = j} / propensity] = 1 for every slot j; a 1/N propensity for expert actions breaks this."""
    rng = np.random.default_rng(2)
    policy = policy_from(POLICIES[name])
    policy.begin_episodes(B, rng)
    docs = doc_features(rng)
    slates, propensity = policy.act(docs, rng)
    onehot = slates[:, 0][:, None] == np.arange(N)  # (B, N)
    weighted = onehot / propensity[:, None]
    means, sems = weighted.mean(axis=0), weighted.std(axis=0) / np.sqrt(B)
    assert (np.abs(means - 1.0) <= 5 * sems + 1e-9).all(), (name, means, sems)


def test_epsilon_greedy_propensity_formula():
    rng = np.random.default_rng(3)
    eps = 0.3
    policy = policy_from(POLICIES["epsilon_greedy"])
    docs = doc_features(rng, b=2000)
    slates, propensity = policy.act(docs, rng)
    expert = docs["clickbait"].argmin(axis=1)
    on_expert = slates[:, 0] == expert
    np.testing.assert_allclose(propensity[on_expert], eps / N + 1 - eps)
    np.testing.assert_allclose(propensity[~on_expert], eps / N)
    assert 0.6 < on_expert.mean() < 0.8


def test_greedy_follows_the_feature():
    rng = np.random.default_rng(4)
    docs = doc_features(rng, b=500)
    for direction, pick in (("max", np.argmax), ("min", np.argmin)):
        slates, propensity = policy_from({"type": "greedy", "direction": direction}).act(docs, rng)
        np.testing.assert_array_equal(slates[:, 0], pick(docs["clickbait"], axis=1))
        np.testing.assert_array_equal(propensity, 1.0)


MIXTURE = {"type": "mixture", "components": [
    {"weight": 0.3, "policy": {"type": "greedy", "direction": "max"}},
    {"weight": 0.5, "policy": {"type": "softmax", "direction": "min", "temperature": 0.5}},
    {"weight": 0.2, "policy": {"type": "random"}},
]}


def test_mixture_episode_propensity_product_is_the_trajectory_probability():
    """prod_t P(a_t | h_t) == sum_k w_k prod_t pi_k(a_t | s_t), computed independently per component."""
    rng = np.random.default_rng(5)
    b, n, steps = 3000, 4, 6
    policy = policy_from(MIXTURE)
    components = [policy_from(c["policy"]) for c in MIXTURE["components"]]
    weights = np.array([c["weight"] for c in MIXTURE["components"]])
    policy.begin_episodes(b, rng)
    log_product = np.zeros(b)
    per_component = np.ones((len(components), b))
    for _ in range(steps):
        docs = doc_features(rng, b, n)
        slates, propensity = policy.act(docs, rng)
        actions = slates[:, 0]
        log_product += np.log(propensity)
        for k, comp in enumerate(components):
            per_component[k] *= comp.probabilities(docs)[np.arange(b), actions]
    np.testing.assert_allclose(np.exp(log_product), weights @ per_component, rtol=1e-9)
    drawn = policy.episode_metrics()["policy_component"]
    assert drawn.shape == (b,)
    freq = np.bincount(drawn, minlength=3) / b
    assert np.abs(freq - weights).max() < 5 * np.sqrt(0.25 / b)


def test_mixture_trajectory_frequencies_match_logged_probabilities():
    """With fixed candidates, every length-3 action sequence appears as often as its logged probability says."""
    rng = np.random.default_rng(6)
    b, n, steps = 60_000, 3, 3
    policy = policy_from({"type": "mixture", "components": [
        {"weight": 0.25, "policy": {"type": "greedy", "direction": "max"}},
        {"weight": 0.75, "policy": {"type": "softmax", "direction": "max", "temperature": 0.3}},
    ]})
    docs = {"clickbait": np.tile(np.array([[0.9, 0.1, 0.5]]), (b, 1))}
    policy.begin_episodes(b, rng)
    actions = np.zeros((b, steps), dtype=np.int64)
    probability = np.ones(b)
    for t in range(steps):
        slates, propensity = policy.act(docs, rng)
        actions[:, t], probability = slates[:, 0], probability * propensity
    codes = actions @ (n ** np.arange(steps))  # (b,) trajectory id
    counts = np.bincount(codes, minlength=n**steps)
    for code, seq in enumerate(itertools.product(range(n), repeat=steps)):
        members = codes == code
        if not members.any():
            continue
        p = probability[members]
        np.testing.assert_allclose(p, p[0])  # same trajectory, same logged probability
        sd = np.sqrt(b * p[0] * (1 - p[0]))
        assert abs(counts[code] - b * p[0]) <= 5 * sd + 1, (seq, counts[code], b * p[0])
    # Probabilities of the observed trajectories plus the unobserved ones sum to one.
    observed = sum(probability[codes == c][0] for c in np.flatnonzero(counts))
    assert observed <= 1.0 + 1e-9 and observed > 0.99


def test_nested_mixture_keeps_exact_propensities():
    rng = np.random.default_rng(7)
    inner = {"type": "mixture", "components": [
        {"weight": 0.5, "policy": {"type": "greedy", "direction": "min"}},
        {"weight": 0.5, "policy": {"type": "random"}},
    ]}
    policy = policy_from({"type": "mixture", "components": [
        {"weight": 0.4, "policy": {"type": "greedy"}}, {"weight": 0.6, "policy": inner},
    ]})
    b = 20_000
    policy.begin_episodes(b, rng)
    docs = doc_features(rng, b)
    probs = policy.probabilities(docs)
    slates, propensity = policy.act(docs, rng)
    np.testing.assert_array_equal(propensity, probs[np.arange(b), slates[:, 0]])
    onehot = slates[:, 0][:, None] == np.arange(N)
    means = (onehot / propensity[:, None]).mean(axis=0)
    np.testing.assert_allclose(means, 1.0, atol=0.1)


def test_missing_document_feature_names_the_field():
    policy = policy_from({"type": "mixture", "components": [
        {"weight": 0.5, "policy": {"type": "random"}},
        {"weight": 0.5, "policy": {"type": "softmax", "feature": "quality"}},
    ]})
    with pytest.raises(ConfigError, match=r"logging\.policy\.components\[1\]\.policy\.feature: the env has no "
                                          r"document feature 'quality' \(available: clickbait\)"):
        policy.check_features(["clickbait"])
    policy_from({"type": "greedy"}).check_features(["clickbait"])


def test_sample_categorical_never_draws_zero_probability():
    rng = np.random.default_rng(8)
    probs = np.zeros((50_000, 4))
    probs[:, 1], probs[:, 3] = 0.25, 0.75
    draws = sample_categorical(probs, rng)
    assert set(np.unique(draws).tolist()) == {1, 3}
    assert abs((draws == 3).mean() - 0.75) < 0.01
