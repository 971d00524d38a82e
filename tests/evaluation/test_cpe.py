"""The CPE library without a simulator: synthetic logs whose true value is known in closed form, model refits,
1-step FQE from an n-step table, trust diagnostics and the ranking."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.config import EvaluationConfig
from reagent_recsys.evaluation.cpe import (
    fit_fqe_models,
    fit_reward_models,
    needed_pairs,
    one_step_estimates,
    sequential_estimates,
)
from reagent_recsys.evaluation.history import StateLayout
from reagent_recsys.evaluation.pipeline import Target, run_cpe

HORIZON = 3


def settings(**overrides) -> EvaluationConfig:
    base = {"fqe_iterations": 5, "fqe_epochs": 3, "fqe_hidden_sizes": [32], "fqe_learning_rate": 5e-3,
            "fqe_batch_size": 128, "reward_model_epochs": 8, "model_bootstrap_fits": 2, "model_refit_fraction": 1.0,
            "bootstrap_samples": 100, "history_decays": [], "gamma": 1.0}
    return EvaluationConfig(**{**base, **overrides})


def target_of(x: np.ndarray) -> np.ndarray:
    """0.8 on the best action (0 when x > 0.5, else 1), 0.1 on each other one."""
    best = np.where(x > 0.5, 0, 1)
    return np.full((len(x), 3), 0.1) + 0.7 * np.eye(3)[best]


# E over x ~ U(0, 1) of sum_a pi(a|x) r(x, a) with r = (x, 0.5, 0): 0.5 (0.8 * 0.75 + 0.05) + 0.5 (0.4 + 0.025).
STEP_VALUE = 0.5375
TRUE_VALUE = HORIZON * STEP_VALUE  # gamma 1: the context is redrawn every step, independent of the actions


def logs(episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Uniformly logged 3-step episodes: state (x, t / T), 3 actions, r = x, 0.5 or 0 (+ noise)."""
    rng = np.random.default_rng(seed)
    n = episodes * HORIZON
    x = rng.uniform(size=n)
    t = np.tile(np.arange(HORIZON), episodes)
    action = rng.integers(0, 3, n)
    reward = np.select([action == 0, action == 1], [x, 0.5], 0.0) + rng.normal(0, 0.1, n)
    return {"mdp_key": np.repeat(np.arange(episodes) + seed * 100_000, HORIZON), "sequence_number": t,
            "state": np.stack([x, t / HORIZON], axis=1).astype(np.float32), "action": action, "reward": reward,
            "action_probability": np.full(n, 1 / 3), "possible_actions_mask": np.ones((n, 3), bool)}


@pytest.fixture(scope="module")
def report():
    train, evaluation = logs(1500, seed=0), logs(1500, seed=1)
    targets = [Target("softmax", "closed form", target_of(evaluation["state"][:, 0]), target_of(train["state"][:, 0])),
               Target("always_2", "worst action", np.tile([0.0, 0.0, 1.0], (len(evaluation["action"]), 1)),
                      None)]
    return run_cpe(settings(), 0, train, evaluation, targets, StateLayout.from_candidates(2, None))


def test_without_a_simulator_dr_and_ips_cover_the_closed_form_truth(report):
    policy = report.policy("softmax")
    for key in ("sequential/DR", "sequential/WDR", "sequential/PDIS"):
        e = policy.estimate(key)
        assert e.lower <= TRUE_VALUE <= e.upper, (key, e)
    for key in ("one_step/DR", "one_step/IPS", "one_step/DM"):
        e = policy.estimate(key)
        assert e.lower <= STEP_VALUE <= e.upper, (key, e)
    assert policy.estimate("sequential/DR").model_fits == 3  # main fit + 2 refits


def test_the_report_has_no_truth_fields(report):
    def keys(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield k
                yield from keys(v)
        elif isinstance(value, list):
            for v in value:
                yield from keys(v)

    found = report.to_dict()
    assert not [k for k in keys(found) if "truth" in k]
    assert not {"ground_truth", "training_curve", "logging_self_check"} & set(found)


def test_ranking_orders_candidates_and_the_logging_policy(report):
    ranking = report.ranking["sequential/WPDIS"]
    assert [r["name"] for r in ranking["order"]] == ["softmax", "logging", "always_2"]
    assert ranking["not_separated"] == []  # 1.6, 1.0 and 0: far apart
    # A table without train-split probabilities gets no FQE: IS and one-step estimators only, said in a note.
    worst = report.policy("always_2")
    assert [e.name for e in worst.sequential] == ["PDIS", "WPDIS"] and worst.notes
    assert "sequential/DR" not in [k for k in report.ranking if "always_2" in str(report.ranking[k])]


def test_trust_diagnostics_flag_collapsed_weights(report):
    policy = report.policy("softmax")
    ips = policy.trust["one_step/IPS"]
    assert ips.level == "ok" and ips.weights.ess_fraction > 0.3 and ips.unsupported_share == 0.0
    assert policy.trust["sequential/DR"].model.r2 > 0.5
    # Always the worst action: a third of the contexts, 1/27 of the episodes carry all the weight.
    worst = report.policy("always_2").trust
    assert worst["one_step/IPS"].weights.zero_weight_share == pytest.approx(2 / 3, abs=0.03)
    assert worst["sequential/PDIS"].weights.ess_fraction == pytest.approx(1 / 27, abs=0.015)
    assert worst["sequential/PDIS"].level == "caution"


def test_greedy_long_episodes_make_pdis_untrusted_in_words():
    rng = np.random.default_rng(0)
    episodes, horizon, actions = 400, 10, 10
    n = episodes * horizon
    split = {"mdp_key": np.repeat(np.arange(episodes), horizon), "sequence_number": np.tile(np.arange(horizon),
             episodes), "state": rng.normal(size=(n, 2)).astype(np.float32), "action": rng.integers(0, actions, n),
             "reward": rng.normal(size=n), "action_probability": np.full(n, 1 / actions),
             "possible_actions_mask": np.ones((n, actions), bool)}
    target = np.eye(actions)[np.zeros(n, int)]
    report = run_cpe(settings(model_bootstrap_fits=0, fqe_iterations=2, reward_model_epochs=2), 0, split, split,
                     [Target("greedy", "test", target, target)], StateLayout.from_candidates(2, None))
    trust = report.policy("greedy").trust
    for key in ("sequential/PDIS", "sequential/WPDIS"):
        assert trust[key].level == "untrusted" and "do not trust: the importance weights have collapsed" in \
            trust[key].why, trust[key]
        assert trust[key].weights.ess < 5
    assert "the value is essentially the model's" in trust["sequential/DR"].why


def test_model_refits_make_the_dm_interval_cover_the_truth():
    """Small noisy train split, large eval split: the fixed-model DM interval is far too narrow; refits fix it."""

    def f(x: np.ndarray, a: np.ndarray) -> np.ndarray:  # E[r | x, a]
        return 1.0 + np.where(a == 0, x[:, 0], 0.0) + np.where(a == 2, 0.5 * x[:, 1], 0.0)

    common = {"fqe_batch_size": 32, "fqe_learning_rate": 1e-2, "reward_model_epochs": 30, "fqe_hidden_sizes": [16],
              "bootstrap_samples": 100, "model_refit_fraction": 0.3}
    covered = {0: 0, 5: 0}
    for rep in range(10):
        rng = np.random.default_rng(rep)

        def split(n: int, rng: np.random.Generator = rng) -> dict[str, np.ndarray]:
            x, a = rng.uniform(-1, 1, (n, 2)).astype(np.float32), rng.integers(0, 3, n)
            return {"state": x, "action": a, "reward": f(x, a) + rng.normal(0, 2, n), "mdp_key": np.arange(n),
                    "action_probability": np.full(n, 1 / 3), "possible_actions_mask": np.ones((n, 3), bool)}

        train, evaluation = split(150), split(3000)
        target = np.eye(3)[np.full(3000, 2)]  # always action 2: DM, DR ~ the model's value
        truth = f(evaluation["state"], np.full(3000, 2)).mean()
        for k in (0, 5):
            cfg = settings(model_bootstrap_fits=k, **common)
            fits = fit_reward_models(cfg, 5, train, evaluation, 3)
            dm = one_step_estimates(cfg, 5, evaluation, target, fits)[0]
            assert dm.name == "DM" and dm.model_fits == (k + 1 if k else 0)
            covered[k] += dm.lower <= truth <= dm.upper
    assert covered[0] <= 2 and covered[5] >= 8, covered


def test_models_predict_only_the_pairs_the_estimators_read():
    """The logged action and every action some target puts mass on; the estimates are those of every pair."""
    rng = np.random.default_rng(3)
    n, slots = 400, 5
    layout = StateLayout.from_candidates(1 + slots, np.arange(1, 1 + slots)[None])  # a per-candidate network
    x = rng.uniform(size=(n, 1 + slots)).astype(np.float32)
    action = rng.integers(0, slots, n)
    split = {"state": x, "action": action, "reward": 2 * x[np.arange(n), 1 + action], "mdp_key": np.arange(n),
             "action_probability": np.full(n, 1 / slots), "possible_actions_mask": np.ones((n, slots), bool)}
    greedy, mixed = np.eye(slots)[x[:, 1:].argmax(axis=1)], np.tile([0.5, 0.5, 0, 0, 0], (n, 1))
    needed = needed_pairs(split, [greedy, mixed])
    assert needed[np.arange(n), action].all() and needed[greedy > 0].all() and needed[:, :2].all()
    assert needed.sum(axis=1).max() <= 4 and not needed.all()
    cfg = settings(model_bootstrap_fits=1)
    some = fit_reward_models(cfg, 5, split, split, slots, layout, targets=[greedy, mixed])
    every = fit_reward_models(cfg, 5, split, split, slots, layout)
    for restricted, full in zip(some.predictions, every.predictions, strict=True):
        np.testing.assert_allclose(restricted[needed], full[needed], rtol=1e-6)
        assert (restricted[~needed] == 0).all()
    for target in (greedy, mixed):
        for a, b in zip(one_step_estimates(cfg, 5, split, target, some), one_step_estimates(cfg, 5, split, target, every),
                        strict=True):
            assert a.value == pytest.approx(b.value, rel=1e-6)


def test_fqe_learns_from_one_step_transitions_when_the_table_is_n_step():
    """The train split's next_state is 5 steps ahead (multi_steps = 5): FQE must still value the target."""
    horizon, episodes = 5, 200
    rng = np.random.default_rng(0)
    n = horizon * episodes
    step = np.tile(np.arange(horizon), episodes)
    action = rng.integers(0, 2, n)
    order = rng.permutation(n)  # rows in any order
    train = {"mdp_key": np.repeat(np.arange(episodes), horizon)[order], "sequence_number": step[order],
             "state": step[order, None].astype(np.float32), "action": action[order],
             "reward": (action == 1).astype(np.float64)[order],
             "next_state": np.zeros((n, 1), np.float32), "not_terminal": np.zeros(n, bool)}  # the n-step view
    evaluation = {**{k: train[k] for k in ("mdp_key", "sequence_number", "state", "action", "reward")},
                  "action_probability": np.full(n, 0.5), "possible_actions_mask": np.ones((n, 2), bool)}
    target = np.tile([0.0, 1.0], (n, 1))  # always action 1 (reward 1 per step): true value = horizon
    cfg = settings(fqe_iterations=8, fqe_epochs=4, fqe_hidden_sizes=[16], fqe_learning_rate=1e-2,
                   fqe_batch_size=128, model_bootstrap_fits=2, bootstrap_samples=40, model_refit_fraction=0.3)
    fits = fit_fqe_models(cfg, 5, train, evaluation, target, target)
    estimates = {e.name: e for e in sequential_estimates(cfg, 5, evaluation, target, fits)}
    assert estimates["FQE"].value == pytest.approx(horizon, abs=0.3)
    assert estimates["FQE"].model_fits == 3  # main fit + 2 refits
    assert estimates["FQE"].lower <= estimates["FQE"].value <= estimates["FQE"].upper
    assert fits.error.r2 > 0.9  # held-out Bellman residual: FQE fits its targets
