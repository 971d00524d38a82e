"""Simulator ground truth: published baselines, feature-id mapping of served policies, the exact one-step value."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from reagent_recsys.config import EnvConfig, validate_config
from reagent_recsys.envs.lts import LTSParams, VectorLTS, feature_specs
from reagent_recsys.evaluation.ground_truth import (
    GroundTruth,
    LoggingActor,
    ServedPolicyActor,
    baseline_actors,
    document_columns,
    env_factory,
    feature_columns,
    ground_truth_table,
    logging_probabilities,
    map_state,
    one_step_truth,
    simulate,
)
from reagent_recsys.policies.logging import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy

SWEET_BITTER = env_factory(EnvConfig(type="lts", preset="sweet_bitter"))
ENV_IDS = [f.id for f in feature_specs(LTSParams.preset("sweet_bitter"))]  # 0, 3, 100..119


class ScoreColumns(nn.Module):
    """A served-policy stand-in: Q(s, a) = state[:, columns[a]] (the exported forward signature)."""

    def __init__(self, columns: list[int], uniform: bool = False) -> None:
        super().__init__()
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long))
        self.uniform = uniform

    def forward(self, state: Tensor, presence: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
                possible_actions_mask: Optional[Tensor] = None) -> dict[str, Tensor]:  # noqa: UP045
        q = state.index_select(1, self.columns)  # (B, A)
        if presence is not None:
            q = q * presence.index_select(1, self.columns)
        if self.uniform:
            q = torch.zeros_like(q)
        if possible_actions_mask is not None:
            q = q.masked_fill(possible_actions_mask == 0, float("-inf"))
        return {"q_values": q, "action": q.argmax(dim=1), "action_probabilities": torch.softmax(q, dim=1)}


def test_published_baselines_within_standard_error():
    actors = {"random": LoggingActor(RandomPolicy()),
              "always_sweetest": LoggingActor(GreedyPolicy("clickbait", "max")),
              "always_bitterest": LoggingActor(GreedyPolicy("clickbait", "min"))}
    table = {t.name: t for t in ground_truth_table(SWEET_BITTER, actors, 4000, seed=7)}
    # Published (tutorial) values, rounded to the digits given: the tolerance adds that rounding.
    for name, published, rounding in (("random", 99.0, 0.5), ("always_sweetest", 56.5, 0.05),
                                      ("always_bitterest", 10.9, 0.05)):
        truth = table[name]
        assert truth.episodes == 4000
        assert truth.lower < truth.mean < truth.upper
        assert abs(truth.mean - published) <= 4 * truth.stderr + rounding, (name, truth)


def test_same_seed_same_numbers_and_common_users():
    actor = LoggingActor(RandomPolicy())
    a = simulate(SWEET_BITTER, actor, 300, seed=3, batch_size=128)
    b = simulate(SWEET_BITTER, actor, 300, seed=3, batch_size=128)
    c = simulate(SWEET_BITTER, actor, 300, seed=4, batch_size=128)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    discounted = simulate(SWEET_BITTER, actor, 300, seed=3, batch_size=128, gamma=0.5)
    assert (discounted < a).all()


def test_served_policy_is_fed_by_feature_id_not_position():
    rng = np.random.default_rng(0)
    policy_ids = [999, *rng.permutation(ENV_IDS).tolist()]  # a feature the simulator lacks, then a permutation
    slots = rng.permutation(20)
    action_names = [str(s) for s in slots]  # policy action i = candidate slot slots[i]
    columns = [policy_ids.index(100 + s) for s in slots]  # Q(s, i) = clickbait of slot slots[i]
    policy = torch.jit.script(ScoreColumns(columns))
    specs = feature_specs(LTSParams.preset("sweet_bitter"))
    served = ServedPolicyActor(policy, policy_ids, action_names, specs, 20, greedy=True)
    sweetest = simulate(SWEET_BITTER, LoggingActor(GreedyPolicy("clickbait", "max")), 500, seed=1)
    np.testing.assert_allclose(simulate(SWEET_BITTER, served, 500, seed=1), sweetest)
    # Negative control: the same network fed by position (ids claimed in the env's order) is not sweetest.
    by_position = ServedPolicyActor(policy, [*ENV_IDS, 999], action_names, specs, 20, greedy=True)
    assert abs(simulate(SWEET_BITTER, by_position, 500, seed=1).mean() - sweetest.mean()) > 5


def test_missing_features_get_zero_presence():
    index, present = feature_columns([3, 999, 0], ENV_IDS)
    state = np.arange(2 * len(ENV_IDS), dtype=np.float32).reshape(2, -1)  # (2, 22)
    mapped, presence = map_state(state, index, present)
    np.testing.assert_array_equal(mapped, state[:, [1, 0, 0]] * np.array([1, 0, 1]))
    np.testing.assert_array_equal(presence, [[1, 0, 1], [1, 0, 1]])


def test_softmax_served_policy_samples_its_probabilities():
    policy = torch.jit.script(ScoreColumns(list(range(2, 22)), uniform=True))  # uniform probabilities
    specs = feature_specs(LTSParams.preset("sweet_bitter"))
    served = ServedPolicyActor(policy, ENV_IDS, [str(i) for i in range(20)], specs, 20, greedy=False)
    truth = GroundTruth.from_returns("uniform", simulate(SWEET_BITTER, served, 3000, seed=2))
    assert abs(truth.mean - 99.0) <= 4 * truth.stderr + 0.5


def test_baselines_from_config_include_the_logging_policy():
    config = validate_config({"output_dir": "x", "env": {}, "logging": {"policy": {"type": "softmax", "temperature": 0.1}}})
    actors = baseline_actors(config, ["clickbait"])
    assert list(actors) == ["logging", "random", "always_sweetest", "always_bitterest"]
    # A softmax over clickbait at a low temperature behaves like always-sweetest.
    logging_return = simulate(SWEET_BITTER, actors["logging"], 500, seed=0).mean()
    assert logging_return < 70


def test_one_step_truth_matches_monte_carlo_engagement():
    params = LTSParams.preset("strong")  # satisfaction observed, engagement noise sigma 0.1
    env = VectorLTS(params, 20_000, np.random.default_rng(5))
    state = env.reset().astype(np.float64)
    ids = [f.id for f in env.features]
    choice = np.random.default_rng(6).integers(0, params.num_candidates, len(state))  # (B,)
    target = np.eye(params.num_candidates)[choice]  # (B, A)
    truth, how = one_step_truth(state, ids, target, [str(i) for i in range(params.num_candidates)], params)
    assert how == "exact"
    reward = env.step(choice).reward
    diff = reward - truth
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))
    # Without the sigma^2 / 2 term the truth would be biased by ~exp(0.005): far outside that band.
    assert abs((reward - truth / np.exp(0.1 ** 2 / 2)).mean()) > 4 * diff.std() / np.sqrt(len(diff))


def test_one_step_truth_unavailable_when_satisfaction_latent():
    params = LTSParams.preset("recsim")
    ids = [f.id for f in feature_specs(params)]
    value, why = one_step_truth(np.zeros((3, len(ids))), ids, np.full((3, 10), 0.1), [str(i) for i in range(10)],
                                params)
    assert value is None and "latent" in why


def test_logging_probabilities_on_logged_states():
    params = LTSParams.preset("sweet_bitter")
    env = VectorLTS(params, 50, np.random.default_rng(0))
    state = env.reset()
    policy = EpsilonGreedyPolicy(0.2, GreedyPolicy("clickbait", "min"))
    shuffled = np.random.default_rng(1).permutation(len(ENV_IDS))  # table columns in another order
    ids = [ENV_IDS[i] for i in shuffled]
    columns = document_columns(ids, env.features, 20)
    slots = np.arange(20)
    probs = logging_probabilities(policy, state[:, shuffled], columns, slots)
    np.testing.assert_allclose(probs, policy.probabilities(env.doc_features), atol=1e-12)
    assert document_columns(ids[:-1], env.features, 20) is None  # a candidate's clickbait is not logged


@pytest.mark.parametrize("bad", [["a", "b"], ["20", "-1"]])
def test_served_policy_rejects_actions_that_are_not_slots(bad):
    policy = torch.jit.script(ScoreColumns([2, 3]))
    with pytest.raises(ValueError, match="candidate slot"):
        ServedPolicyActor(policy, ENV_IDS, bad, feature_specs(LTSParams.preset("sweet_bitter")), 20, greedy=True)


class HistoryRule:
    """A served-policy stand-in that acts on its history features: sweetest while the decayed sum of the chosen
    clickbait (column -2) is below 1, else bitterest; it records every state it is given."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, state: Tensor, presence: Tensor, mask: Tensor) -> dict[str, Tensor]:
        self.seen.append(state.numpy().copy())
        clickbait = state[:, 2:22]  # the policy's ids: ENV_IDS, then its 3 history features
        action = torch.where(state[:, -2] < 1.0, clickbait.argmax(1), clickbait.argmin(1))
        return {"action": action, "action_probabilities": torch.nn.functional.one_hot(action, 20).double()}


def test_served_policy_sees_its_history_features_as_the_timeline_defines_them():
    from reagent_recsys.history import HistorySpec, spec_to_dict

    spec = HistorySpec(sums=("candidate.clickbait",), decays=(0.7,), counts=("step",), since=("metric.click",))
    # ids in spec.features order: sum[0.7].candidate.clickbait, count.step, since.metric.click
    block = spec_to_dict(spec, [1000, 1001, 1002])
    policy_ids = [*ENV_IDS, 1002, 1000, 1001]  # a permuted order: the history columns are found by id
    specs = feature_specs(LTSParams.preset("sweet_bitter"))
    rule = HistoryRule()
    served = ServedPolicyActor(rule, policy_ids, [str(i) for i in range(20)], specs, 20, greedy=True, history=block)
    returns = simulate(SWEET_BITTER, served, 50, seed=4, batch_size=25)
    seen = np.stack(rule.seen).reshape(2, 10, 25, -1)  # (batch, step, user, feature)
    for batch in seen:
        chosen = np.where(batch[:, :, -2] < 1.0, batch[:, :, 2:22].argmax(2), batch[:, :, 2:22].argmin(2))
        clickbait = np.take_along_axis(batch[:, :, 2:22], chosen[:, :, None], 2)[:, :, 0]  # (T, B) float32
        for t in range(10):  # the definition, step by step: sum_{k<t} 0.7^(t-1-k) x_k, k steps, click always 1
            acc = np.zeros(25)
            for k in range(t):
                acc = acc * 0.7 + clickbait[k].astype(np.float64)
            np.testing.assert_array_equal(batch[t, :, -2], acc.astype(np.float32))
            np.testing.assert_array_equal(batch[t, :, -1], np.full(25, t, np.float32))
            np.testing.assert_array_equal(batch[t, :, -3], np.ones(25, np.float32))  # a click every step
    assert (seen[:, 3:, :, -2] >= 1.0).any() and (seen[:, 3:, :, -2] < 1.0).any()  # the rule used both branches
    sweetest = simulate(SWEET_BITTER, LoggingActor(GreedyPolicy("clickbait", "max")), 50, seed=4, batch_size=25)
    assert abs(returns.mean() - sweetest.mean()) > 1  # the features changed what it did


def test_a_history_source_the_simulator_lacks_is_named():
    from reagent_recsys.history import HistorySpec, spec_to_dict

    block = spec_to_dict(HistorySpec(sums=("metric.revenue",), decays=(1.0,)), [1000])
    with pytest.raises(ValueError, match="metric.revenue"):
        ServedPolicyActor(ScoreColumns([2, 3]), [*ENV_IDS, 1000], ["0", "1"], feature_specs(
            LTSParams.preset("sweet_bitter")), 20, greedy=True, history=block)
