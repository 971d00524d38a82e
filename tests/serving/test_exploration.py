"""Exploration: the probabilities of each rule and an exact logged propensity for the sampled action."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.serving.exploration import action_probabilities, sample

Q = np.array([[1.0, 2.0, 0.5, 3.0], [0.0, -1.0, 4.0, 1.0]])
MASK = np.array([[True, True, True, False], [True, False, True, True]])
GREEDY = np.array([1, 2])  # the best possible action of each row


def test_greedy_is_one_hot():
    probs = action_probabilities(Q, MASK, GREEDY, "greedy")
    assert probs.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    actions, p = sample(probs, np.random.default_rng(0))
    assert actions.tolist() == [1, 2] and p.tolist() == [1.0, 1.0]


def test_softmax_over_possible_actions():
    probs = action_probabilities(Q, MASK, GREEDY, "softmax", temperature=0.5)
    expected = np.exp(np.where(MASK, Q / 0.5, -np.inf))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True))
    assert (probs[~MASK] == 0).all()


def test_epsilon_greedy():
    probs = action_probabilities(Q, MASK, GREEDY, "epsilon_greedy", epsilon=0.3)
    np.testing.assert_allclose(probs[0], [0.1, 0.8, 0.1, 0.0])
    np.testing.assert_allclose(probs[1], [0.1, 0.0, 0.8, 0.1])


@pytest.mark.parametrize("kind", ["softmax", "epsilon_greedy"])
def test_sampled_frequencies_match_the_logged_propensities(kind):
    rng = np.random.default_rng(1)
    n = 40_000
    q = np.repeat(Q[:1], n, axis=0)
    mask = np.repeat(MASK[:1], n, axis=0)
    probs = action_probabilities(q, mask, np.full(n, 1), kind, temperature=1.0, epsilon=0.3)
    actions, propensities = sample(probs, rng)
    np.testing.assert_array_equal(propensities, probs[np.arange(n), actions])
    assert mask[np.arange(n), actions].all()  # never an impossible action
    frequency = np.bincount(actions, minlength=4) / n
    np.testing.assert_allclose(frequency, probs[0], atol=4 * np.sqrt(0.25 / n))


def test_same_seed_same_actions():
    probs = action_probabilities(np.random.default_rng(0).normal(size=(100, 6)), np.ones((100, 6), bool),
                                 np.zeros(100, int), "softmax")
    a1, _ = sample(probs, np.random.default_rng(5))
    a2, _ = sample(probs, np.random.default_rng(5))
    assert a1.tolist() == a2.tolist()
