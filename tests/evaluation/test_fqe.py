"""Fitted Q evaluation and the reward model recover known values on tiny tabular problems."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.evaluation import (
    BootstrapSpec,
    EpisodeData,
    EvaluationDataError,
    evaluate_sequential,
    fit_fqe,
    fit_reward_model,
)
from reagent_recsys.evaluation.synthetic import (
    LOGGING_POLICY,
    TARGET_POLICY,
    make_bandit_problem,
    make_mdp,
    simulate,
    stationary_q,
)

NO_HORIZON = 60  # episodes end by termination (p = 0.2 per step); reaching this cap has probability ~1e-6


def one_hot(index: np.ndarray, size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[index]


def fit_on(episodes, iterations: int = 20, seed: int = 0):
    s = one_hot(episodes.state, 3)
    s_next = one_hot(episodes.next_state, 3)
    return fit_fqe(s, episodes.action, episodes.reward, s_next, episodes.not_terminal,
                   TARGET_POLICY[episodes.next_state], gamma=0.9, iterations=iterations, epochs=2,
                   hidden_sizes=(32,), learning_rate=1e-2, batch_size=512, seed=seed)


@pytest.fixture(scope="module")
def logged():
    return simulate(make_mdp(), LOGGING_POLICY, 1_500, NO_HORIZON, seed=21)


@pytest.fixture(scope="module")
def fitted(logged):
    return fit_on(logged)


def test_fqe_recovers_the_true_q(fitted):
    true_q = stationary_q(make_mdp(), TARGET_POLICY)  # (S, A)
    q = fitted.q_values(np.eye(3))  # (S, A)
    assert np.abs(q - true_q).max() < 0.06, (q, true_q)
    assert len(fitted.losses) == 20
    wrong_policy_q = stationary_q(make_mdp(), LOGGING_POLICY)
    assert np.abs(q - wrong_policy_q).max() > 0.1  # it evaluates the target, not the logging policy


def test_fqe_is_deterministic_per_seed(logged):
    first, again = fit_on(logged, iterations=2), fit_on(logged, iterations=2)
    other = fit_on(logged, iterations=2, seed=1)
    assert np.array_equal(again.q_values(np.eye(3)), first.q_values(np.eye(3)))
    assert not np.array_equal(other.q_values(np.eye(3)), first.q_values(np.eye(3)))


def test_fqe_feeds_the_sequential_estimators(logged, fitted):
    mdp = make_mdp()
    true_v = float(mdp.initial @ (TARGET_POLICY * stationary_q(mdp, TARGET_POLICY)).sum(axis=1))
    q_rows = fitted.q_values(one_hot(logged.state, 3))  # (N, A) for every logged step
    data = EpisodeData.from_flat(logged.episode_key, logged.sequence_number, logged.action, logged.propensity,
                                 logged.reward, TARGET_POLICY[logged.state], 0.9, q_estimates=q_rows)
    estimates = {e.name: e for e in evaluate_sequential(data, BootstrapSpec(samples=100, seed=1), num_j_steps=6)}
    for name in ("FQE", "DR", "WDR", "MAGIC", "WPDIS"):
        assert estimates[name].lower <= true_v <= estimates[name].upper, estimates[name]
    assert estimates["FQE"].relative > 1.0  # the target beats the logging policy here


def test_reward_model_recovers_expected_rewards():
    problem = make_bandit_problem(6_000, seed=3, noise=0.2)
    model = fit_reward_model(one_hot(problem.context, 5), problem.logged_action, problem.reward, num_actions=4,
                             epochs=50, hidden_sizes=(32,), learning_rate=3e-3, batch_size=512)
    assert np.abs(model.q_values(np.eye(5)) - problem.q_true).max() < 0.05  # cell means themselves err ~0.03


def test_fqe_rejects_bad_next_probabilities():
    s = np.zeros((3, 2), np.float32)
    probs = np.array([[0.5, 0.5], [0.9, 0.3], [np.nan, np.nan]])  # row 2 is terminal: ignored
    with pytest.raises(EvaluationDataError, match=r"sum to 1 where not terminal: column 'next_target_probs' .* 1 rows"):
        fit_fqe(s, np.zeros(3, int), np.zeros(3), s, np.array([True, True, False]), probs, gamma=0.9)
    with pytest.raises(EvaluationDataError, match=r"action index in \[0, A\): column 'action'"):
        fit_fqe(s, np.array([0, 2, 0]), np.zeros(3), s, np.zeros(3, bool), np.full((3, 2), 0.5), gamma=0.9)
