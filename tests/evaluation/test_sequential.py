"""Sequential estimators on a small MDP whose true value is known by dynamic programming."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.evaluation import (
    BootstrapSpec,
    EpisodeData,
    EvaluationDataError,
    evaluate_sequential,
    magic_blend,
    pad_episodes,
    per_decision_importance_sampling,
    sequential_doubly_robust,
    weighted_doubly_robust,
    weighted_per_decision_importance_sampling,
)
from reagent_recsys.evaluation.synthetic import (
    LOGGING_POLICY,
    TARGET_POLICY,
    finite_horizon_q,
    make_mdp,
    simulate,
)

HORIZON = 6
SPEC = BootstrapSpec(samples=200, seed=0)


def episode_data(episodes, target=TARGET_POLICY, q_table=None, gamma=0.9) -> EpisodeData:
    """EpisodeData from flat simulated steps; q_table (H, S, A) gives Q-estimates per ordinal step."""
    q = None if q_table is None else q_table[episodes.step, episodes.state]
    return EpisodeData.from_flat(
        episodes.episode_key, episodes.sequence_number, episodes.action, episodes.propensity, episodes.reward,
        target[episodes.state], gamma, q_estimates=q,
    )


def true_value(mdp, policy=TARGET_POLICY) -> float:
    q0 = finite_horizon_q(mdp, policy, HORIZON)[0]
    return float(mdp.initial @ (policy * q0).sum(axis=1))


def test_pad_episodes_orders_and_pads():
    key = np.array([7, 3, 7, 3, 7])
    seq = np.array([20, 5, 10, 1, 30])
    value = np.array([2.0, 1.0, 1.5, 0.5, 3.0])
    padded, mask, keys = pad_episodes(key, seq, {"value": value, "pair": np.stack([value, -value], axis=1)})
    assert keys.tolist() == [3, 7]
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert padded["value"].tolist() == [[0.5, 1.0, 0.0], [1.5, 2.0, 3.0]]
    assert padded["pair"].shape == (2, 3, 2)
    with pytest.raises(EvaluationDataError, match=r"duplicate steps, e.g. keys \[3\] at sequence_number \[5\]"):
        pad_episodes(np.array([3, 3]), np.array([5, 5]), {"value": np.ones(2)})


def test_on_policy_importance_sampling_is_the_logged_value():
    mdp = make_mdp()
    episodes = simulate(mdp, LOGGING_POLICY, 500, HORIZON, seed=1)
    data = episode_data(episodes, target=LOGGING_POLICY)
    for est in (per_decision_importance_sampling(data, SPEC), weighted_per_decision_importance_sampling(data, SPEC)):
        assert est.value == pytest.approx(est.baseline)
        assert est.relative == pytest.approx(1.0)
    assert data.num_episodes == 500
    assert 1 < data.mask.sum(axis=1).mean() < HORIZON  # episodes of different lengths


def test_estimators_recover_the_true_value():
    mdp = make_mdp()
    truth = true_value(mdp)
    logged_truth = true_value(mdp, LOGGING_POLICY)
    assert abs(truth - logged_truth) > 0.1  # the target really differs from the logging policy
    episodes = simulate(mdp, LOGGING_POLICY, 4_000, HORIZON, seed=2)
    exact_q = finite_horizon_q(mdp, TARGET_POLICY, HORIZON)
    estimates = {e.name: e for e in evaluate_sequential(episode_data(episodes, q_table=exact_q), SPEC)}
    assert list(estimates) == ["PDIS", "WPDIS", "FQE", "DR", "WDR", "MAGIC"]
    for est in estimates.values():
        assert est.lower <= truth <= est.upper, est
        assert abs(est.value - truth) < 0.1
        assert est.baseline == pytest.approx(logged_truth, abs=0.1)
    # The exact model removes the reward and action noise (not the transition noise): DR is tighter than PDIS.
    width = {name: est.upper - est.lower for name, est in estimates.items()}
    assert width["DR"] < 0.7 * width["PDIS"]


def test_dr_corrects_a_biased_model_and_magic_stays_within_its_components():
    mdp = make_mdp()
    truth = true_value(mdp)
    episodes = simulate(mdp, LOGGING_POLICY, 3_000, HORIZON, seed=3)
    biased_q = finite_horizon_q(mdp, TARGET_POLICY, HORIZON) + 0.5
    data = episode_data(episodes, q_table=biased_q)
    estimates = {e.name: e for e in evaluate_sequential(data, SPEC)}
    assert not estimates["FQE"].lower <= truth <= estimates["FQE"].upper  # the model alone is off
    for name in ("DR", "WDR", "MAGIC"):
        assert estimates[name].lower <= truth <= estimates[name].upper, estimates[name]
    blend = magic_blend(data, seed=SPEC.seed)
    assert blend.j_steps.tolist() == list(range(-1, HORIZON))
    assert blend.returns.min() <= blend.value <= blend.returns.max()
    assert blend.weights.sum() == pytest.approx(1.0) and (blend.weights >= 0).all()
    assert blend.value == pytest.approx(estimates["MAGIC"].value)
    assert blend.returns[0] == pytest.approx(estimates["FQE"].value)  # j = -1: the model
    assert blend.returns[-1] == pytest.approx(estimates["WDR"].value)  # j = T-1: WDR
    assert blend.bias[0] > 0 and blend.weights[0] < 0.05  # the biased model gets (almost) no weight


def test_magic_is_within_its_components_on_noisy_small_samples():
    mdp = make_mdp()
    q = finite_horizon_q(mdp, TARGET_POLICY, HORIZON)
    for seed in range(5):
        data = episode_data(simulate(mdp, LOGGING_POLICY, 60, HORIZON, seed=10 + seed), q_table=q + 0.1 * seed)
        blend = magic_blend(data, num_j_steps=4, seed=seed)
        assert len(blend.j_steps) == 4 and blend.j_steps[0] == -1 and blend.j_steps[-1] == HORIZON - 1
        assert blend.returns.min() - 1e-12 <= blend.value <= blend.returns.max() + 1e-12


def test_episode_bootstrap_covers_the_truth_at_about_the_nominal_rate():
    mdp = make_mdp()
    truth = true_value(mdp)
    trials, covered = 60, 0
    for trial in range(trials):
        data = episode_data(simulate(mdp, LOGGING_POLICY, 300, HORIZON, seed=100 + trial))
        est = weighted_per_decision_importance_sampling(data, BootstrapSpec(samples=200, confidence=0.9, seed=trial))
        covered += est.lower <= truth <= est.upper
    # Binomial(60, 0.9) has sd 0.039.
    assert 0.75 <= covered / trials <= 0.99


def test_bad_episode_inputs_are_named():
    mask = np.array([[True, False, True]])
    ones = np.ones((1, 3))
    with pytest.raises(EvaluationDataError, match="non-empty prefix of True: 1 episodes"):
        EpisodeData(ones, mask, np.zeros((1, 3), int), ones, np.ones((1, 3, 1)), 0.9)
    good_mask = np.array([[True, True, False]])
    with pytest.raises(EvaluationDataError, match=r"propensity in \(0, 1\]: column 'logged_propensity'"):
        EpisodeData(ones, good_mask, np.zeros((1, 3), int), np.array([[0.5, 0.0, 0.0]]), np.ones((1, 3, 1)), 0.9)
    with pytest.raises(EvaluationDataError, match=r"target_probs must have shape \(1, 3, 1\)"):
        EpisodeData(ones, good_mask, np.zeros((1, 3), int), ones, np.ones((1, 2, 1)), 0.9)
    with pytest.raises(EvaluationDataError, match="needs q_estimates"):
        magic_blend(EpisodeData(ones, good_mask, np.zeros((1, 3), int), ones, np.ones((1, 3, 1)), 0.9))


def test_vectorized_estimators_match_per_episode_loops():
    """PDIS, WPDIS, DR (Jiang & Li's backward recursion) and WDR written as plain loops over ragged episodes."""
    rng = np.random.default_rng(0)
    gamma, num_actions, lengths = 0.8, 3, [3, 1, 4, 2]
    episodes = []
    for length in lengths:
        target = rng.dirichlet(np.ones(num_actions), size=length)  # (L, A)
        episodes.append({
            "action": rng.integers(0, num_actions, size=length), "mu": rng.uniform(0.2, 0.9, size=length),
            "reward": rng.normal(size=length), "target": target, "q": rng.normal(size=(length, num_actions)),
        })
    horizon = max(lengths)
    mask = np.arange(horizon) < np.array(lengths)[:, None]

    def padded(key, shape=()):
        out = np.zeros((len(lengths), horizon, *shape))
        for i, ep in enumerate(episodes):
            out[i, :len(ep[key])] = ep[key]
        return out

    data = EpisodeData(padded("reward"), mask, padded("action").astype(int), np.where(mask, padded("mu"), 1.0),
                       np.where(mask[..., None], padded("target", (num_actions,)), 1 / num_actions), gamma,
                       q_estimates=padded("q", (num_actions,)))
    rho = [ep["target"][np.arange(len(ep["action"])), ep["action"]] / ep["mu"] for ep in episodes]
    weights = [np.cumprod(r) for r in rho]  # ragged w_t
    pdis = np.mean([sum(gamma**t * w[t] * ep["reward"][t] for t in range(len(w)))
                    for w, ep in zip(weights, episodes, strict=True)])
    carried = np.array([[w[min(t, len(w) - 1)] for t in range(horizon)] for w in weights])  # absorbed: w stays
    wpdis = sum(gamma**t * sum(carried[i, t] * (ep["reward"][t] if t < len(ep["reward"]) else 0.0)
                               for i, ep in enumerate(episodes)) / carried[:, t].sum() for t in range(horizon))
    dr_values = []
    for r_i, ep in zip(rho, episodes, strict=True):
        v_dr = 0.0
        for t in reversed(range(len(r_i))):
            v_hat = ep["target"][t] @ ep["q"][t]
            v_dr = v_hat + r_i[t] * (ep["reward"][t] + gamma * v_dr - ep["q"][t, ep["action"][t]])
        dr_values.append(v_dr)
    spec = BootstrapSpec(samples=20, seed=0)
    assert per_decision_importance_sampling(data, spec).value == pytest.approx(pdis)
    assert weighted_per_decision_importance_sampling(data, spec).value == pytest.approx(wpdis)
    assert sequential_doubly_robust(data, spec).value == pytest.approx(np.mean(dr_values))
    # WDR: sum_t gamma^t [sum_i wn_t r_t - sum_i (wn_t q_t - wn_{t-1} v_t)], wn = w / sum_i w.
    v = np.array([[ep["target"][t] @ ep["q"][t] if t < len(ep["action"]) else 0.0 for t in range(horizon)]
                  for ep in episodes])
    q_taken = np.array([[ep["q"][t, ep["action"][t]] if t < len(ep["action"]) else 0.0 for t in range(horizon)]
                        for ep in episodes])
    prev = np.hstack([np.ones((len(lengths), 1)), carried[:, :-1]])
    wdr = sum(gamma**t * ((carried[:, t] * (padded("reward")[:, t] - q_taken[:, t])).sum() / carried[:, t].sum()
                          + (prev[:, t] * v[:, t]).sum() / prev[:, t].sum()) for t in range(horizon))
    assert weighted_doubly_robust(data, spec).value == pytest.approx(wdr)
