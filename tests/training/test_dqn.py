"""The update rule by hand: targets, masks, double-Q, n-step / time_diff discounting, CQL, BCQ, learning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reagent_recsys.config import TrainingConfig
from reagent_recsys.data.loaders import LoaderOptions, TrainingBatch, make_loader, table_to_chunk
from reagent_recsys.data.synthetic import (
    arrays_to_table,
    best_action,
    synthetic_arrays,
    synthetic_normalization,
    write_synthetic_training_table,
)
from reagent_recsys.normalization import Preprocessor
from reagent_recsys.training.dqn import BCQ, CQL, DQN, DoubleCQL, DoubleDQN, build_algorithm
from reagent_recsys.training.networks import DQNModel, bcq_filter, masked_max
from reagent_recsys.training.trainer import ModelSpec

F, A = 4, 3


def make_batch(n: int = 16, seed: int = 0) -> TrainingBatch:
    chunk = table_to_chunk(arrays_to_table(synthetic_arrays(n, F, A, episode_length=4, seed=seed)))
    chunk["n_steps"] = np.arange(n) % 3 + 1
    chunk["time_diff"] = np.arange(n) % 2 + 2
    chunk["n_step_reward"] = chunk["reward"] * 2
    return TrainingBatch(**{k: torch.from_numpy(np.array(v)) for k, v in chunk.items()})


def make_algo(cls=DQN, **overrides) -> DQN:
    torch.manual_seed(0)
    config = TrainingConfig(hidden_sizes=[8], **overrides)
    model = DQNModel(F, A, [8], dueling=True, behavior_cloning=cls is BCQ, value_scale=config.value_scale)
    algo = cls(model, Preprocessor(synthetic_normalization(list(range(F)))), config)
    with torch.no_grad():  # make the target differ from the online network
        for p in algo.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return algo


def test_masked_max_ignores_impossible_actions():
    q = torch.tensor([[1.0, 9.0, 2.0], [5.0, 1.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, False, True], [False, True, True], [False, False, False]])
    best, index = masked_max(q, mask)
    assert best.tolist() == [2.0, 1.0, 0.0] and index.tolist() == [2, 1, 0]


def test_dqn_target_by_hand():
    algo, batch = make_algo(DQN, gamma=0.9), make_batch()
    with torch.no_grad():
        next_x = batch.next_state * batch.next_state_presence  # the preprocessor is the identity here
        q_next = algo.target(next_x)[0].masked_fill(~batch.possible_next_actions_mask, -np.inf)
    expected = []
    for i in range(len(batch)):
        bootstrap = bool(batch.not_terminal[i]) and bool(batch.possible_next_actions_mask[i].any())
        future = 0.9 ** int(batch.n_steps[i]) * float(q_next[i].max()) if bootstrap else 0.0
        expected.append(float(batch.n_step_reward[i]) + future)
    torch.testing.assert_close(algo.compute_target(batch), torch.tensor(expected))


def test_time_diff_discount_and_bandit():
    batch = make_batch()
    plain = make_algo(DQN, gamma=0.9).compute_target(batch)
    by_time = make_algo(DQN, gamma=0.9, time_diff_discount=True).compute_target(batch)
    q_part = (plain - batch.n_step_reward) / 0.9 ** batch.n_steps.float()
    torch.testing.assert_close(by_time, batch.n_step_reward + 0.9 ** batch.time_diff.float() * q_part)
    torch.testing.assert_close(make_algo(DQN, gamma=0.0).compute_target(batch), batch.n_step_reward)


def test_double_q_uses_online_argmax_and_target_value():
    algo, batch = make_algo(DoubleDQN, gamma=1.0), make_batch()
    with torch.no_grad():
        next_x = batch.next_state * batch.next_state_presence
        a_star = masked_max(algo.net(next_x)[0], batch.possible_next_actions_mask)[1]
        value = algo.target(next_x)[0].gather(1, a_star[:, None]).squeeze(1)
    live = batch.not_terminal & batch.possible_next_actions_mask.any(1)
    expected = batch.n_step_reward + torch.where(live, value, 0.0)
    torch.testing.assert_close(algo.compute_target(batch), expected)
    assert not torch.allclose(expected, make_algo(DQN, gamma=1.0).compute_target(batch))


@pytest.mark.parametrize(("cls", "loss"), [(DQN, "mse"), (DoubleDQN, "huber"), (CQL, "mse")])
def test_value_scale_is_reward_scaling_in_reward_units(cls, loss):
    """value_scale s on rewards x s takes exactly the steps value_scale 1 takes on the rewards: the same weights,
    Q-values s times as large (so with s ~ the returns the layers work in O(1) units)."""
    plain, scaled = make_algo(cls, loss=loss), make_algo(cls, loss=loss, value_scale=50.0)
    for seed in range(3):
        batch = make_batch(seed=seed)
        plain.update(batch)
        batch.n_step_reward = batch.n_step_reward * 50.0
        scaled.update(batch)
    for a, b in zip(plain.net.parameters(), scaled.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    x = make_batch(seed=7).state
    with torch.no_grad():
        torch.testing.assert_close(scaled.net(x)[0], 50.0 * plain.net(x)[0], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(scaled.net(x)[0], plain.net(x)[0])


def test_value_scale_is_part_of_the_saved_model_spec():
    spec = ModelSpec.from_config(TrainingConfig(value_scale=100.0), F, A)
    assert spec.to_dict()["value_scale"] == 100.0 and spec.build().q.value_scale == 100.0
    old = {k: v for k, v in spec.to_dict().items() if k != "value_scale"}  # saved before the field existed
    assert ModelSpec(**old).build().q.value_scale == 1.0
    net = spec.build().eval()
    scripted = torch.jit.script(net.q)  # the exported policy scripts this module
    x = torch.randn(5, F)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net.q(x))
        unit = copy.deepcopy(net.q)
        unit.value_scale = 1.0
        torch.testing.assert_close(net.q(x), 100.0 * unit(x))


def test_cql_adds_logsumexp_penalty():
    batch = make_batch()
    plain, cql = make_algo(DQN, loss="mse"), make_algo(CQL, loss="mse", cql_alpha=0.5)
    td, _ = plain.compute_loss(batch)
    total, stats = cql.compute_loss(batch)
    with torch.no_grad():
        q = cql.net(batch.state * batch.state_presence)[0]
        lse = torch.logsumexp(q.masked_fill(~batch.possible_actions_mask, -np.inf), dim=1)
        penalty = (lse - q.gather(1, batch.action[:, None]).squeeze(1)).mean()
    torch.testing.assert_close(total, td + 0.5 * penalty)
    torch.testing.assert_close(stats["cql_loss"], penalty)


def test_bcq_filter_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    kept = bcq_filter(logits, mask, threshold=0.5)
    # row 0: ratios 1, 0.6, 0.4; row 1 (third impossible): 1, 1
    assert kept.tolist() == [[True, True, False], [True, True, False]]


def test_bcq_trains_its_behavior_head_and_filters_targets():
    algo, batch = make_algo(BCQ, bcq_threshold=1.0), make_batch()
    _, stats = algo.compute_loss(batch)
    assert "bc_loss" in stats
    with torch.no_grad():  # threshold 1: only the imitator's favourite possible action survives
        next_x = batch.next_state * batch.next_state_presence
        q, logits = algo.net(next_x)
        favourite = masked_max(logits, batch.possible_next_actions_mask)[1]
    torch.testing.assert_close(algo.next_actions(next_x, batch.possible_next_actions_mask, q), favourite)
    before = [p.clone() for p in algo.net.imitator.parameters()]
    algo.update(batch)
    assert any(not torch.equal(b, p) for b, p in zip(before, algo.net.imitator.parameters(), strict=True))


def test_build_algorithm_picks_variants():
    model, pre = DQNModel(F, A, [8]), Preprocessor(synthetic_normalization(list(range(F))))
    kinds = {(alg, dq): type(build_algorithm(model, pre, TrainingConfig(algorithm=alg, double_q=dq)))
             for alg in ("dqn", "cql") for dq in (True, False)}
    assert kinds == {("dqn", True): DoubleDQN, ("dqn", False): DQN, ("cql", True): DoubleCQL, ("cql", False): CQL}


def test_update_changes_weights_soft_target_and_clips():
    algo, batch = make_algo(DQN, tau=0.5, grad_clip_norm=1e-3, learning_rate=0.1), make_batch()
    online0 = [p.clone() for p in algo.net.parameters()]
    target0 = [p.clone() for p in algo.target.parameters()]
    stats = algo.update(batch)
    assert stats["grad_norm"] > 1e-2  # the norm before clipping
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in algo.net.parameters()]))
    assert clipped <= 1e-3 * (1 + 1e-4)
    for t0, o1, t1 in zip(target0, algo.net.parameters(), algo.target.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * o1)
    assert any(not torch.equal(a, b) for a, b in zip(online0, algo.net.parameters(), strict=True))


@pytest.mark.parametrize("algorithm", ["dqn", "cql", "bcq"])
def test_offline_bandit_learns_the_best_action(tmp_path, algorithm):
    """gamma = 0 on the synthetic bandit (reward = s[a % F]): the greedy policy beats the logged one by far."""
    torch.set_num_threads(1)
    path = tmp_path / "train"
    write_synthetic_training_table(path, 6000, num_features=F, num_actions=A, files=1, row_group_size=1000,
                                   mask_rate=0.0, seed=1)
    loader = make_loader("arrow", path, LoaderOptions(batch_size=128, shuffle_buffer=2000))
    config = TrainingConfig(algorithm=algorithm, gamma=0.0, hidden_sizes=[32], learning_rate=3e-3,
                            cql_alpha=0.1, bcq_threshold=0.1)
    torch.manual_seed(0)
    algo = build_algorithm(DQNModel(F, A, [32], behavior_cloning=algorithm == "bcq"),
                           Preprocessor(synthetic_normalization(list(range(F)))), config)
    for epoch in range(4):
        for batch in loader.epoch(epoch):
            algo.update(batch)
    test = synthetic_arrays(2000, F, A, mask_rate=0.0, seed=99)
    with torch.no_grad():
        q = algo.net(torch.from_numpy(test["state"]))[0].numpy()
    agreement = (q.argmax(1) == best_action(test["state"], test["possible_actions_mask"])).mean()
    assert agreement > 0.85, agreement
