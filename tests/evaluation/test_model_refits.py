"""1-step transitions from a table of logged steps, bootstrap refits, and intervals widened by model spread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from reagent_recsys.evaluation import Estimate, EvaluationDataError, fit_fqe, fit_reward_model
from reagent_recsys.evaluation.bootstrap import combine_model_fits
from reagent_recsys.evaluation.fqe import next_step_index, refit_on_resamples, resample_groups


def test_next_step_index_follows_each_episode_in_any_row_order():
    key = np.array([7, 3, 7, 3, 7, 9])
    seq = np.array([5, 1, 2, 4, 9, 0])  # gaps allowed; rows shuffled
    nxt, live = next_step_index(key, seq)
    # episode 7: rows 2 (seq 2) -> 0 (seq 5) -> 4 (seq 9, last); episode 3: 1 -> 3; episode 9: single step.
    np.testing.assert_array_equal(live, [True, True, True, False, False, False])
    np.testing.assert_array_equal(nxt[live], [4, 3, 0])
    np.testing.assert_array_equal(nxt[~live], [3, 4, 5])  # terminal rows point to themselves


def test_next_step_index_rejects_duplicate_steps():
    with pytest.raises(EvaluationDataError, match=r"unique \(mdp_key, sequence_number\): 1 duplicate"):
        next_step_index(np.array([1, 1, 2]), np.array([4, 4, 0]))


def test_resample_groups_draws_whole_episodes():
    group = np.array([5, 5, 5, 1, 2, 2, 8])
    rows = resample_groups(group, np.random.default_rng(3))
    assert rows.min() >= 0 and rows.max() < len(group)
    for g, size in zip(*np.unique(group, return_counts=True), strict=True):
        assert (group[rows] == g).sum() % size == 0  # an episode comes whole (possibly several times)
    again = resample_groups(group, np.random.default_rng(3))
    np.testing.assert_array_equal(rows, again)


def chain_episodes(num_episodes: int, horizon: int, seed: int) -> dict[str, np.ndarray]:
    """Uniform logging over 2 actions for `horizon` steps; reward 1 for action 1; state = the step index."""
    rng = np.random.default_rng(seed)
    step = np.tile(np.arange(horizon), num_episodes)  # (N,)
    return {"key": np.repeat(np.arange(num_episodes), horizon), "seq": step,
            "state": step[:, None].astype(np.float32), "action": rng.integers(0, 2, len(step)),
            "horizon": np.full(len(step), horizon)}


def test_fqe_on_rebuilt_one_step_transitions_values_the_target_not_the_logger():
    """Target: always action 1 (value = horizon). n-step transitions would value ~1 + (horizon - 1) / 2."""
    horizon, n = 5, 5
    ep = chain_episodes(300, horizon, seed=0)
    reward = (ep["action"] == 1).astype(np.float64)
    target = np.tile([0.0, 1.0], (len(reward), 1))  # (N, 2)
    settings = {"iterations": 8, "epochs": 4, "hidden_sizes": (16,), "learning_rate": 1e-2, "batch_size": 128}
    nxt, live = next_step_index(ep["key"], ep["seq"])
    one_step = fit_fqe(ep["state"], ep["action"], reward, ep["state"][nxt], live, target[nxt], 1.0, **settings)
    # The table's n-step transition: s_{t+n}, n-step reward of the LOGGED actions.
    cum = np.cumsum(reward.reshape(-1, horizon)[:, ::-1], axis=1)[:, ::-1].ravel()  # (N,) reward-to-go
    n_step = fit_fqe(ep["state"], ep["action"], cum, ep["state"], np.zeros(len(reward), bool), target, 1.0,
                     n_steps=np.full(len(reward), n), **settings)
    start = np.zeros((1, 1), np.float32)
    assert one_step.values(start, np.array([[0.0, 1.0]]))[0] == pytest.approx(horizon, abs=0.3)
    assert n_step.values(start, np.array([[0.0, 1.0]]))[0] == pytest.approx(1 + (horizon - 1) / 2, abs=0.3)


def test_refits_are_warm_started_deterministic_and_differ_from_each_other():
    rng = np.random.default_rng(1)
    state = rng.normal(size=(400, 2)).astype(np.float32)
    action = rng.integers(0, 3, 400)
    reward = state[:, 0] * (action == 0) + rng.normal(size=400)
    group = np.repeat(np.arange(100), 4)
    main = fit_reward_model(state, action, reward, 3, epochs=10, seed=0)

    def fit(rows: np.ndarray, seed: int):
        return fit_reward_model(state[rows], action[rows], reward[rows], 3, epochs=2, seed=seed, init=main)

    refits = refit_on_resamples(fit, group, 3, seed=4)
    again = refit_on_resamples(fit, group, 3, seed=4)
    probe = state[:50]
    values = [r.q_values(probe) for r in refits]
    for a, b in zip(values, [r.q_values(probe) for r in again], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(values[0], values[1])
    # Warm start: a refit stays near the main fit (2 epochs from scratch would be far from it).
    assert np.abs(values[0] - main.q_values(probe)).mean() < 0.5 * np.abs(main.q_values(probe)).mean() + 0.2
    assert float(refits[0].network.reward_scale) == float(main.network.reward_scale)


def estimate(value: float, lower: float, upper: float, baseline: float = 2.0) -> Estimate:
    return Estimate("DR", value, lower, upper, value / baseline, lower / baseline, upper / baseline, 100, baseline)


def rubin_half_width(half: float, values: list[float]) -> float:
    """Rubin's rules by hand over M fits: t quantile at nu = (M-1)(1 + W/((1+1/M)B))^2 times sqrt(W + (1+1/M)B)."""
    m, within = len(values), (half / 1.959964) ** 2
    between = (1 + 1 / m) * np.var(values, ddof=1)
    return scipy.stats.t.ppf(0.975, (m - 1) * (1 + within / between) ** 2) * math.sqrt(within + between)


def test_model_fits_are_combined_by_rubins_rules():
    e = estimate(10.0, 9.0, 12.0)  # the main fit: 10, its bootstrap interval [9, 12]
    refits = [9.0, 11.0, 12.0]
    combined = combine_model_fits(e, refits, 0.95)
    fits = [10.0, *refits]  # M = 4 fits, mean 10.5
    assert combined.value == pytest.approx(10.5) and combined.model_fits == 4
    assert combined.model_spread == pytest.approx(np.std(fits, ddof=1))
    assert combined.lower == pytest.approx(10.5 - rubin_half_width(1.0, fits), rel=1e-5)
    assert combined.upper == pytest.approx(10.5 + rubin_half_width(2.0, fits), rel=1e-5)
    # Few fits, model spread dominating: the t quantile is far above z = 1.96 (nu ~ 3.7: t ~ 2.9).
    assert combined.lower < 10.5 - 2.8 * math.sqrt((1 / 1.96) ** 2 + 1.25 * np.var(fits, ddof=1))
    assert combined.relative == pytest.approx(10.5 / 2.0)
    assert combined.relative_lower == pytest.approx(combined.lower / 2.0, rel=1e-9)
    assert combined.relative_upper == pytest.approx(combined.upper / 2.0, rel=1e-9)
    below_zero = Estimate("DR", 10.0, 9.0, 12.0, -5.0, -6.0, -4.5, 100, -2.0)  # a negative baseline
    negative = combine_model_fits(below_zero, refits, 0.95)
    assert negative.relative == pytest.approx(-10.5 / 2.0)
    assert negative.relative_lower == pytest.approx(-5.25 - rubin_half_width(2.0, fits) / 2, rel=1e-5)
    assert negative.relative_upper == pytest.approx(-5.25 + rubin_half_width(1.0, fits) / 2, rel=1e-5)
    assert combine_model_fits(e, [], 0.95) == e  # no refit: nothing to combine
    same = combine_model_fits(e, [10.0, 10.0], 0.95)  # identical fits: the data interval as it was
    assert (same.value, same.lower, same.upper) == (10.0, 9.0, 12.0)
