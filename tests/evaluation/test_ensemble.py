"""Batched ensembles: M fits trained together behave like M fits of their own (same values, own seeds and rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reagent_recsys.evaluation.ensemble import StackedAdam, StackedMLP
from reagent_recsys.evaluation.fqe import (
    fit_fqe,
    fit_fqe_ensemble,
    fit_plan,
    fit_reward_model,
    fit_reward_model_ensemble,
    matmul_dtype,
)
from reagent_recsys.evaluation.history import StateLayout
from reagent_recsys.evaluation.synthetic import (
    LOGGING_POLICY,
    TARGET_POLICY,
    make_mdp,
    simulate,
    stationary_q,
)

SETTINGS = {"hidden_sizes": (32,), "learning_rate": 1e-2, "batch_size": 512}


@pytest.fixture(scope="module")
def logged():
    episodes = simulate(make_mdp(), LOGGING_POLICY, 1_500, 60, seed=21)
    eye = np.eye(3, dtype=np.float32)
    arrays = (eye[episodes.state], episodes.action, episodes.reward, eye[episodes.next_state],
              episodes.not_terminal, TARGET_POLICY[episodes.next_state])
    return episodes, arrays


def test_stacked_mlp_gradients_and_adam_match_autograd_and_torch_adam():
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, out))
               for out in (1, 1, 1)]
    x, target = torch.randn(3, 40, 5), torch.randn(3, 40)
    mlp = StackedMLP(members)

    def stacked_gradients() -> torch.Tensor:
        activations = mlp.activations(x)
        return mlp.gradients(activations, (2 * (activations[-1][..., 0] - target) / 40)[..., None])

    d_weights, d_biases = mlp.views(stacked_gradients().clone())
    optimizer = StackedAdam(mlp, lr=0.01)
    for _ in range(3):
        stacked_gradients()
        optimizer.step()
    for m, member in enumerate(members):  # member m alone, by autograd and torch.optim.Adam
        linears = [layer for layer in member if isinstance(layer, nn.Linear)]
        adam = torch.optim.Adam(member.parameters(), lr=0.01)
        for step in range(3):
            adam.zero_grad()
            nn.functional.mse_loss(member(x[m])[:, 0], target[m]).backward()
            if step == 0:
                for layer, d_weight, d_bias in zip(linears, d_weights, d_biases, strict=True):
                    torch.testing.assert_close(d_weight[m], layer.weight.grad.T)
                    torch.testing.assert_close(d_bias[m, 0], layer.bias.grad)
            adam.step()
        torch.testing.assert_close(mlp(x)[m, :, 0], member(x[m])[:, 0].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out", [1, 4])
def test_bfloat16_matmuls_keep_float32_outputs_and_gradients_within_rounding(out):
    torch.manual_seed(1)
    members = [nn.Sequential(nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, out))
               for _ in range(2)]
    x, d_output = torch.randn(2, 256, 7), torch.randn(2, 256, out)
    exact, low = StackedMLP(members), StackedMLP(members, torch.bfloat16)
    exact_acts, low_acts = exact.activations(x), low.activations(x)
    assert low_acts[1].dtype == torch.bfloat16 and low_acts[-1].dtype == torch.float32
    torch.testing.assert_close(low_acts[-1], exact_acts[-1], rtol=0.02, atol=0.02)
    exact_grad, low_grad = exact.gradients(exact_acts, d_output), low.gradients(low_acts, d_output)
    assert low_grad.dtype == torch.float32 and low_grad.shape == exact_grad.shape
    # a few percent from rounding every product's inputs (minibatch noise is far larger), same direction
    assert (low_grad - exact_grad).norm() < 0.08 * exact_grad.norm()
    assert torch.nn.functional.cosine_similarity(low_grad, exact_grad, dim=0) > 0.995
    assert not torch.equal(low_grad, exact_grad)  # it did run in bfloat16


def test_matmul_precision_setting():
    assert matmul_dtype("float32") == torch.float32 and matmul_dtype("bfloat16") == torch.bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert matmul_dtype("auto") == (torch.bfloat16 if native else torch.float32)


def test_members_match_their_own_fits_with_own_rows_and_seeds(logged):
    episodes, arrays = logged
    row_sets, seeds = fit_plan(episodes.episode_key, 2, seed=3)
    row_sets[2] = row_sets[2][:len(row_sets[2]) // 2]  # unequal sizes: this member idles after its steps
    ensemble = fit_fqe_ensemble(*arrays, 0.9, row_sets=row_sets, seeds=seeds, iterations=2, epochs=2, **SETTINGS)
    probe = np.eye(3)
    for rows, seed, member in zip(row_sets, seeds, ensemble, strict=True):
        alone = fit_fqe(*(a[rows] for a in arrays), 0.9, iterations=2, epochs=2, seed=seed, **SETTINGS)
        np.testing.assert_allclose(member.q_values(probe), alone.q_values(probe), atol=1e-3)
        np.testing.assert_allclose(member.losses, alone.losses, rtol=1e-3)
        assert float(member.network.reward_scale) == pytest.approx(float(alone.network.reward_scale), rel=1e-6)
    assert not np.allclose(ensemble[0].q_values(probe), ensemble[1].q_values(probe), atol=1e-4)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_every_member_recovers_the_true_q_and_same_seeds_give_the_same_bits(logged, precision):
    episodes, arrays = logged
    row_sets, seeds = fit_plan(episodes.episode_key, 2, seed=0)
    settings = {**SETTINGS, "precision": precision}
    first = fit_fqe_ensemble(*arrays, 0.9, row_sets=row_sets, seeds=seeds, iterations=20, epochs=2, **settings)
    true_q = stationary_q(make_mdp(), TARGET_POLICY)  # (S, A)
    values = [member.q_values(np.eye(3)) for member in first]
    for q in values:
        assert np.abs(q - true_q).max() < 0.08, (q, true_q)
    assert np.abs(values[1] - values[2]).max() > 1e-3  # other rows, other seeds: other fits
    again = fit_fqe_ensemble(*arrays, 0.9, row_sets=row_sets, seeds=seeds, iterations=2, epochs=1, **settings)
    twice = fit_fqe_ensemble(*arrays, 0.9, row_sets=row_sets, seeds=seeds, iterations=2, epochs=1, **settings)
    for a, b in zip(again, twice, strict=True):
        np.testing.assert_array_equal(a.q_values(np.eye(3)), b.q_values(np.eye(3)))


def test_warm_started_members_keep_the_main_fits_units_and_stay_near_it():
    rng = np.random.default_rng(1)
    state = rng.normal(size=(600, 2)).astype(np.float32)
    action = rng.integers(0, 3, 600)
    reward = 5 * state[:, 0] * (action == 0) + rng.normal(size=600)
    main = fit_reward_model(state, action, reward, 3, epochs=15, seed=0)
    row_sets, seeds = fit_plan(np.repeat(np.arange(150), 4), 3, seed=4)
    refits = fit_reward_model_ensemble(state, action, reward, 3, row_sets=row_sets[1:], seeds=seeds[1:], epochs=2,
                                       init=main)
    probe, reference = state[:50], main.q_values(state[:50])
    for refit in refits:
        assert float(refit.network.reward_scale) == float(main.network.reward_scale)
        torch.testing.assert_close(refit.network.state_mean, main.network.state_mean)
        assert np.abs(refit.q_values(probe) - reference).mean() < 0.25 * np.abs(reference).mean()
    assert not np.allclose(refits[0].q_values(probe), refits[1].q_values(probe))


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_per_candidate_ensemble_learns_the_shared_candidate_function(precision):
    """Reward = 3 x the chosen candidate's feature; a stochastic target over candidates for FQE's s'."""
    rng = np.random.default_rng(0)
    n, slots = 600, 6
    layout = StateLayout.from_candidates(1 + slots, np.arange(1, 1 + slots)[None])
    state = rng.uniform(size=(n, 1 + slots)).astype(np.float32)
    action = rng.integers(0, slots, n)
    reward = 3.0 * state[np.arange(n), 1 + action]
    row_sets, seeds = fit_plan(np.arange(n) // 3, 2, seed=0)
    test_state = rng.uniform(size=(500, 1 + slots)).astype(np.float32)
    models = fit_reward_model_ensemble(state, action, reward, slots, row_sets=row_sets, seeds=seeds, epochs=60,
                                       hidden_sizes=(32,), learning_rate=3e-3, batch_size=64, layout=layout,
                                       precision=precision)
    for model in models:
        assert model.network.per_candidate
        assert np.abs(model.q_values(test_state) - 3.0 * test_state[:, 1:]).mean() < 0.1
    needed = rng.random((500, slots)) < 0.3  # only these pairs are evaluated, the rest are 0
    some = models[0].q_values(test_state, needed)
    np.testing.assert_allclose(some[needed], models[0].q_values(test_state)[needed], rtol=1e-5, atol=1e-5)
    assert (some[~needed] == 0).all()
    # FQE, gamma 0.5, uniform (stochastic) target; s' is a fresh state whose every candidate feature (and context)
    # is c ~ U(0, 1), so V(s') = 3c + k_{i-1} and Q_i(s, a) = 3 x_a + k_i, k_i = 0.5 (1.5 + k_{i-1}) -> 1.5.
    next_state = np.repeat(rng.uniform(size=(n, 1)), 1 + slots, axis=1).astype(np.float32)
    probs = np.full((n, slots), 1.0 / slots)
    fqe = fit_fqe_ensemble(state, action, reward, next_state, np.ones(n, bool), probs, 0.5,
                           row_sets=row_sets[:2], seeds=seeds[:2], iterations=8, epochs=10, hidden_sizes=(32,),
                           learning_rate=3e-3, batch_size=64, layout=layout, precision=precision)
    for model in fqe:
        assert np.abs(model.q_values(test_state) - (3.0 * test_state[:, 1:] + 1.5)).mean() < 0.15


def test_row_sets_and_seeds_are_checked():
    state = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="row_sets and seeds must be equally long"):
        fit_reward_model_ensemble(state, np.zeros(4, int), np.zeros(4), 2, row_sets=[np.arange(4)], seeds=[0, 1],
                                  epochs=1)
    with pytest.raises(ValueError, match=r"row_sets\[0\] must be a non-empty 1-d array of row indices in \[0, 4\)"):
        fit_reward_model_ensemble(state, np.zeros(4, int), np.zeros(4), 2, row_sets=[np.array([0, 4])], seeds=[0],
                                  epochs=1)
