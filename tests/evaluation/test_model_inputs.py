"""Model inputs: history features (exact sums over each episode's past; FQE then values a latent-state policy)
and the per-candidate network shared by every slot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reagent_recsys.evaluation import fit_fqe, fit_reward_model
from reagent_recsys.evaluation.fqe import QNetwork, next_step_index
from reagent_recsys.evaluation.history import StateLayout, history_features
from reagent_recsys.evaluation.inputs import MODEL_STATE, add_model_state


def reference_history(key, seq, x, decay):
    """Row by row: h_t = sum_{k<t} decay^(t-1-k) x_k over the earlier steps (by sequence_number) of the episode."""
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(len(key)):
        earlier = np.flatnonzero((key == key[i]) & (seq < seq[i]))
        earlier = earlier[np.argsort(seq[earlier])]
        for age, k in enumerate(earlier[::-1]):  # the step just before has age 0
            out[i] += decay ** age * x[k]
    return out


def test_history_sums_each_episodes_past_whatever_the_row_order():
    rng = np.random.default_rng(0)
    key = np.repeat(rng.permutation(40), rng.integers(1, 9, size=40))  # episodes of 1-8 steps
    seq = np.concatenate([np.sort(rng.choice(100, size=n, replace=False)) for n in np.bincount(key)[key[
        np.r_[True, key[1:] != key[:-1]]]]])  # sequence numbers with gaps
    state = rng.normal(size=(len(key), 4)).astype(np.float32)  # two context columns, candidates in 2 and 3
    action = rng.integers(0, 2, len(key))
    shuffle = rng.permutation(len(key))
    key, seq, state, action = key[shuffle], seq[shuffle], state[shuffle], action[shuffle]
    layout = StateLayout.from_candidates(4, np.array([[2, 3]]))
    x = layout.step_inputs(state, action, 2)  # (N, 3): context 0, context 1, the chosen candidate's feature
    got = history_features(key, seq, state, action, 2, layout, [0.5, 1.0])
    assert got.shape == (len(key), 6) and got.dtype == np.float32
    assert layout.history_spec([0.5, 1.0], 2).names[:2] == ["history.sum[0.5].state.0", "history.sum[1].state.0"]
    for j in range(3):  # per source, each decay
        np.testing.assert_allclose(got[:, 2 * j], reference_history(key, seq, x, 0.5)[:, j], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[:, 2 * j + 1], reference_history(key, seq, x, 1.0)[:, j], rtol=1e-5,
                                   atol=1e-5)
    first = np.array([seq[i] == seq[key == key[i]].min() for i in range(len(key))])
    assert (got[first] == 0).all() and (got[~first] != 0).any()
    assert history_features(key, seq, state, action, 2, layout, []).shape == (len(key), 0)


def test_the_timelines_history_columns_are_not_summed_again():
    layout = StateLayout.from_candidates(5, np.array([[1, 2]]), history_columns=[4])  # column 4: timeline history
    np.testing.assert_array_equal(layout.context_columns, [0, 3])
    assert layout.history_spec([0.7], 2).sums == ("state.0", "state.3", "candidate.0")


def test_step_inputs_hold_the_context_and_the_chosen_candidate():
    state = np.array([[7.0, 0.1, 0.9], [8.0, 0.3, 0.6]])  # context, candidate 0, candidate 1
    with_candidates = StateLayout.from_candidates(3, np.array([[1, 2]]))
    np.testing.assert_array_equal(with_candidates.context_columns, [0])
    np.testing.assert_allclose(with_candidates.step_inputs(state, np.array([1, 0]), 2), [[7.0, 0.9], [8.0, 0.3]])
    without = StateLayout.from_candidates(3, None)  # no candidate features: a one-hot of the action
    np.testing.assert_allclose(without.step_inputs(state, np.array([1, 0]), 2),
                               [[7.0, 0.1, 0.9, 0.0, 1.0], [8.0, 0.3, 0.6, 1.0, 0.0]])


def latent_counter_episodes(num_episodes: int, horizon: int, seed: int) -> dict[str, np.ndarray]:
    """Uniformly logged episodes whose state shows only the time; the last reward counts the action-1 steps.

    The count is latent: the observation (time) is not a Markov state. "Always 1" truly earns `horizon`.
    """
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 2, size=(num_episodes, horizon))  # (E, T)
    reward = np.zeros((num_episodes, horizon))
    reward[:, -1] = action.sum(axis=1)
    time = np.broadcast_to(np.arange(horizon, dtype=np.float32) / horizon, (num_episodes, horizon))
    return {"mdp_key": np.repeat(np.arange(num_episodes), horizon), "sequence_number": np.tile(np.arange(horizon),
            num_episodes), "state": time.reshape(-1, 1), "action": action.ravel(), "reward": reward.ravel(),
            "possible_actions_mask": np.ones((num_episodes * horizon, 2), dtype=bool)}


@pytest.mark.parametrize("decays, expected", [([], 2.5), ([1.0], 4.0)])
def test_fqe_values_a_latent_state_policy_only_with_history(decays, expected):
    split = add_model_state(latent_counter_episodes(3000, 4, seed=0), StateLayout.from_candidates(1, None), decays)
    nxt, live = next_step_index(split["mdp_key"], split["sequence_number"])
    always_one = np.tile([0.0, 1.0], (len(nxt), 1))
    fqe = fit_fqe(split[MODEL_STATE], split["action"], split["reward"], split[MODEL_STATE][nxt], live, always_one,
                  1.0, iterations=6, epochs=4, hidden_sizes=(32, 32), learning_rate=3e-3, seed=0)
    first = split["sequence_number"] == 0
    value = fqe.values(split[MODEL_STATE][first], always_one[first]).mean()
    # Without history the last step's Q averages the LOGGED count (1.5 + a): "always 1" looks worth 2.5, not 4.
    assert value == pytest.approx(expected, abs=0.15)


def test_per_candidate_network_is_shared_across_slots():
    layout = StateLayout.from_candidates(4, np.array([[1, 2, 3]]))  # context column 0, one feature per candidate
    net = QNetwork(np.zeros(4), np.ones(4), 1.0, 3, (8,), layout)
    state = torch.tensor([[0.5, 0.1, 0.2, 0.3], [0.5, 0.3, 0.2, 0.1]])
    q = net.scaled(state)  # (2, 3)
    torch.testing.assert_close(q[0], q[1].flip(0))  # the same candidates in reversed slots: reversed Q
    action = torch.tensor([2, 0])
    torch.testing.assert_close(net.scaled_at(state, action), q.gather(1, action[:, None])[:, 0])


def test_per_candidate_reward_model_generalizes_across_slots():
    """Reward = the chosen candidate's feature: few samples per slot, but one shared function to learn."""
    rng = np.random.default_rng(0)
    n, slots = 400, 10
    state = rng.uniform(size=(n, 1 + slots)).astype(np.float32)  # a context feature and one per candidate
    action = rng.integers(0, slots, n)
    reward = 3.0 * state[np.arange(n), 1 + action]
    test_state = rng.uniform(size=(2000, 1 + slots)).astype(np.float32)
    errors = {}
    for name, layout in (("per_action", None),
                         ("per_candidate", StateLayout.from_candidates(1 + slots, np.arange(1, 1 + slots)[None]))):
        model = fit_reward_model(state, action, reward, slots, epochs=60, hidden_sizes=(32,), learning_rate=3e-3,
                                 batch_size=64, seed=0, layout=layout)
        errors[name] = np.abs(model.q_values(test_state) - 3.0 * test_state[:, 1:]).mean()
    assert errors["per_candidate"] < 0.1 < errors["per_action"] / 2, errors
