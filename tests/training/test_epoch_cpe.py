"""Per-epoch CPE: the estimates of the greedy policy, and the `cpe/` scalars the trainer writes to TensorBoard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reagent_recsys.data.synthetic import write_synthetic_run
from reagent_recsys.evaluation.epoch_cpe import EpochCPE, EvalSplit, greedy_probabilities
from reagent_recsys.training.run import train
from tests.training.helpers import TINY, load_events, tensorboard_runs, tiny_config


def _split(rows: int = 600, actions: int = 4, episode_length: int = 5, seed: int = 0) -> EvalSplit:
    rng = np.random.default_rng(seed)
    return EvalSplit(
        state=rng.normal(size=(rows, 3)).astype(np.float32), state_presence=np.ones((rows, 3), bool),
        action=rng.integers(0, actions, rows), action_probability=np.full(rows, 1.0 / actions),
        reward=rng.exponential(size=rows), possible_actions_mask=np.ones((rows, actions), bool),
        mdp_key=np.arange(rows) // episode_length, sequence_number=np.arange(rows) % episode_length)


def test_greedy_probabilities_respect_the_mask():
    q = np.array([[1.0, 5.0, 2.0], [9.0, 0.0, 1.0]])
    possible = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(greedy_probabilities(q, possible), [[0, 0, 1], [0, 0, 1]])


def test_policy_that_repeats_the_logged_actions_scores_the_logged_value():
    split = _split()
    q = np.eye(4)[split.action] * 3.0  # greedy = the logged action on every row
    cpe = EpochCPE(split, gamma=0.9)
    found = cpe.estimate(q)
    assert found["one_step/SNIPS"].value == pytest.approx(split.reward.mean())
    assert found["one_step/IPS"].value == pytest.approx(4 * split.reward.mean())
    returns = (split.reward.reshape(-1, 5) * 0.9 ** np.arange(5)).sum(axis=1)
    assert found["sequential/WPDIS"].value == pytest.approx(returns.mean())
    assert found["sequential/WPDIS"].relative == pytest.approx(1.0)
    assert "one_step/DR" not in found  # gamma > 0: Q is no reward model


def test_bandit_uses_the_model_as_reward_model():
    split = _split(seed=1)
    q = np.tile([0.0, 1.0, 2.0, 3.0], (len(split), 1))  # always action 3, predicted reward 3
    found = EpochCPE(split, gamma=0.0).estimate(q)
    assert found["one_step/DM"].value == pytest.approx(3.0)
    logged_3 = split.action == 3
    expected_dr = np.mean(3.0 + np.where(logged_3, 4 * (split.reward - 3.0), 0.0))
    assert found["one_step/DR"].value == pytest.approx(expected_dr)
    assert found["sequential/WDR"].value == pytest.approx(expected_dr, rel=0.2)  # gamma 0: first steps only


@pytest.mark.parametrize(("algorithm", "gamma"), [("dqn", 0.9), ("bcq", 0.0)])
def test_trainer_writes_cpe_scalars_to_tensorboard(tmp_path, algorithm, gamma):
    write_synthetic_run(tmp_path, 1500, eval_rows=500, seed=0, **TINY)
    train(tiny_config(tmp_path, epochs=3, algorithm=algorithm, gamma=gamma))
    (run,) = tensorboard_runs(tmp_path)
    events = load_events(run)
    tags = {t for t in events.Tags()["scalars"] if t.startswith("cpe/")}
    names = ["one_step/IPS", "one_step/SNIPS", "sequential/WPDIS", "sequential/WDR"]
    names += ["one_step/DM", "one_step/DR"] if gamma == 0 else []
    expected = {f"cpe/{name}" for name in names}
    assert expected <= tags, sorted(tags)
    for tag in tags:
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), (tag, values)
    assert len({e.value for e in events.Scalars("cpe/sequential/WDR")}) > 1  # it follows the training


def test_cpe_every_epoch_off_writes_no_cpe(tmp_path):
    write_synthetic_run(tmp_path, 600, eval_rows=200, seed=0, **TINY)
    train(tiny_config(tmp_path, epochs=1, cpe_every_epoch=False))
    (run,) = tensorboard_runs(tmp_path)
    events = load_events(run)
    assert not [t for t in events.Tags()["scalars"] if t.startswith("cpe/")]
    assert "train/td_loss" in events.Tags()["scalars"]
