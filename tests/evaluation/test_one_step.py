"""One-step estimators on a synthetic contextual bandit with a known value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reagent_recsys.evaluation import (
    BanditData,
    BootstrapSpec,
    EvaluationDataError,
    direct_method,
    doubly_robust,
    evaluate_one_step,
    inverse_propensity_score,
    self_normalized_ips,
    self_normalized_weights,
    switch_doubly_robust,
)
from reagent_recsys.evaluation.synthetic import make_bandit_problem

SPEC = BootstrapSpec(samples=200, confidence=0.95, seed=3)


def bandit_data(problem, model: np.ndarray | None = None) -> BanditData:
    return BanditData(problem.logged_action, problem.logged_propensity, problem.reward, problem.target_probs,
                      reward_predictions=None if model is None else model[problem.context])


def test_ips_converges_to_truth_under_uniform_logging():
    errors, covered = {}, 0
    for n in (400, 40_000):
        errs = []
        for seed in range(4):
            problem = make_bandit_problem(n, seed)
            est = inverse_propensity_score(bandit_data(problem), SPEC)
            errs.append(abs(est.value - problem.true_value))
            if n == 40_000:
                covered += est.lower <= problem.true_value <= est.upper
                assert est.upper - est.lower < 0.03
        errors[n] = np.mean(errs)
    assert errors[40_000] < errors[400] / 4  # error shrinks like 1/sqrt(N): 10x expected
    assert covered >= 3


def test_greedy_target_ips_and_dr_are_unbiased():
    problem = make_bandit_problem(40_000, seed=11, greedy=True)
    wrong_model = problem.q_true + 0.3  # a biased model: DR must correct it, DM cannot
    data = bandit_data(problem, wrong_model)
    for est in (inverse_propensity_score(data, SPEC), doubly_robust(data, SPEC)):
        assert est.lower <= problem.true_value <= est.upper, est
    dm = direct_method(data, SPEC)
    assert dm.value == pytest.approx(problem.sample_value + 0.3)
    assert not dm.lower <= problem.true_value <= dm.upper


def test_dr_is_exact_with_an_exact_model_and_noiseless_rewards():
    problem = make_bandit_problem(2_000, seed=5, noise=0.0)
    data = bandit_data(problem, problem.q_true)
    dr = doubly_robust(data, SPEC)
    ips = inverse_propensity_score(data, SPEC)
    assert dr.value == pytest.approx(problem.sample_value, abs=1e-12)
    assert abs(ips.value - problem.sample_value) > 1e-3  # IPS is noisy even here: DR's exactness is not trivial


def test_self_normalized_weights_sum_to_one_and_define_snips():
    problem = make_bandit_problem(1_000, seed=2)
    data = bandit_data(problem)
    weights = self_normalized_weights(data.importance_weight())
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert (weights >= 0).all()
    snips = self_normalized_ips(data, SPEC)
    assert snips.value == pytest.approx(float(weights @ problem.reward), abs=1e-12)
    assert problem.reward.min() <= snips.lower <= snips.upper <= problem.reward.max()
    with pytest.raises(EvaluationDataError, match="all importance weights are 0"):
        self_normalized_weights(np.zeros(3))


def test_switch_dr_interpolates_dm_and_dr_at_its_extremes():
    problem = make_bandit_problem(3_000, seed=4)
    data = bandit_data(problem, problem.q_true + 0.2)
    dm, dr = direct_method(data, SPEC), doubly_robust(data, SPEC)
    at_zero = switch_doubly_robust(data, SPEC, tau=0.0)
    at_inf = switch_doubly_robust(data, SPEC, tau=np.inf)
    assert (at_zero.value, at_zero.lower, at_zero.upper) == pytest.approx((dm.value, dm.lower, dm.upper))
    assert (at_inf.value, at_inf.lower, at_inf.upper) == pytest.approx((dr.value, dr.lower, dr.upper))
    middle = switch_doubly_robust(data, SPEC, tau=float(np.median(data.importance_weight())))
    assert min(dm.value, dr.value) < middle.value < max(dm.value, dr.value)


def test_relative_is_value_over_logged_mean_reward():
    problem = make_bandit_problem(2_000, seed=8)
    on_policy = BanditData(problem.logged_action, problem.logged_propensity, problem.reward,
                           np.full_like(problem.target_probs, 0.25))
    same = inverse_propensity_score(on_policy, SPEC)  # pi = mu: IPS is the logged mean, relative exactly 1
    assert same.baseline == pytest.approx(problem.reward.mean())
    assert same.value == pytest.approx(same.baseline)
    assert same.relative == pytest.approx(1.0)
    assert same.relative_lower == pytest.approx(1.0) and same.relative_upper == pytest.approx(1.0)
    est = inverse_propensity_score(bandit_data(problem), SPEC)
    assert est.relative == pytest.approx(est.value / est.baseline)
    assert est.relative_lower < est.relative < est.relative_upper
    assert est.relative > 1.0  # the softmax target prefers high-reward actions
    assert est.n == 2_000


def test_same_seed_same_intervals_and_json_safe_dict():
    data = bandit_data(make_bandit_problem(500, seed=1), make_bandit_problem(1, 0).q_true)
    first = evaluate_one_step(data, SPEC)
    again = evaluate_one_step(data, SPEC)
    other = evaluate_one_step(data, BootstrapSpec(samples=200, seed=4))
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
    assert first[0].lower != other[0].lower
    assert [e.name for e in first] == ["DM", "IPS", "SNIPS", "DR", "Switch-DR"]
    json.dumps([e.to_dict() for e in first], allow_nan=False)
    zero = BanditData(np.zeros(4, int), np.ones(4), np.zeros(4), np.ones((4, 1)))
    assert inverse_propensity_score(zero, SPEC).to_dict()["relative"] is None


def test_possible_action_mask_renormalizes_the_target():
    mask = np.array([[1, 1, 0], [1, 0, 1]], dtype=bool)
    data = BanditData(np.array([0, 2]), np.array([0.5, 0.5]), np.array([1.0, 2.0]),
                      np.array([[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]]), possible_action_mask=mask)
    assert data.pi == pytest.approx(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    assert data.importance_weight() == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logged_propensity": np.array([0.5, 0.0, 0.5])}, r"propensity in \(0, 1\]: column 'logged_propensity' .* 1 rows"),
        ({"logged_action": np.array([0, 3, 1])}, r"logged action index in \[0, A\): column 'logged_action'"),
        ({"target_probs": np.array([[0.5, 0.2, 0.2]] * 3)}, r"sum to 1: column 'target_probs' .* 3 rows"),
        ({"reward": np.array([0.0, np.nan, 1.0])}, r"finite reward: column 'reward'"),
        ({"possible_action_mask": np.array([[0, 1, 1]] * 3, dtype=bool)}, r"logged action is a possible action"),
        ({"reward": np.zeros(2)}, r"reward must have shape \(3,\)"),
    ],
)
def test_bad_inputs_name_the_rule_and_column(change, message):
    inputs = {"logged_action": np.array([0, 1, 2]), "logged_propensity": np.full(3, 1 / 3),
              "reward": np.ones(3), "target_probs": np.full((3, 3), 1 / 3)}
    inputs.update(change)
    with pytest.raises(EvaluationDataError, match=message):
        BanditData(**inputs)


def test_dm_needs_a_reward_model():
    with pytest.raises(EvaluationDataError, match="reward_predictions"):
        direct_method(bandit_data(make_bandit_problem(10, 0)), SPEC)


def test_switch_dr_by_hand():
    # rho = pi(a_i) / mu_i = [0.5, 2.0, 4.0]; q(x_i, a_i) = 0.5 everywhere; DM term = 0.5 per row.
    data = BanditData(np.array([0, 1, 1]), np.array([0.5, 0.25, 0.25]), np.array([1.0, 0.0, 1.0]),
                      np.array([[0.25, 0.5, 0.25], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]),
                      reward_predictions=np.full((3, 3), 0.5))
    assert data.importance_weight() == pytest.approx([0.5, 2.0, 4.0])
    corrections = np.array([0.5 * 0.5, 2.0 * -0.5, 4.0 * 0.5])
    for tau, kept in ((0.5, [1, 0, 0]), (2.0, [1, 1, 0]), (3.9, [1, 1, 0]), (4.0, [1, 1, 1])):
        expected = 0.5 + (corrections * kept).mean()
        assert switch_doubly_robust(data, SPEC, tau=tau).value == pytest.approx(expected), tau
