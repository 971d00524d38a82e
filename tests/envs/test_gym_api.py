"""The gymnasium views: env_checker, registered ids, and parity with VectorLTS for the same seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from reagent_recsys.envs.gym_env import LTSGymEnv, LTSVectorEnv
from reagent_recsys.envs.lts import LTSParams, VectorLTS


@pytest.mark.parametrize("env_id", ["reagent_recsys/LTS-v0", "reagent_recsys/StrongLTS-v0",
                                    "reagent_recsys/SweetBitterLTS-v0"])
def test_check_env_passes(env_id):
    env = gym.make(env_id).unwrapped  # the checker wants the bare env (a spec is set by make)
    check_env(env, skip_render_check=True)


def test_check_env_with_slates():
    env = gym.make("reagent_recsys/LTS-v0", slate_size=3).unwrapped
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete) and env.action_space.shape == (3,)
    check_env(env, skip_render_check=True)


def test_single_env_matches_vector_lts_and_terminates():
    params = LTSParams.preset("strong")
    env = LTSGymEnv(params)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 20
    obs, info = env.reset(seed=9)
    sim = VectorLTS(params, 1, np.random.default_rng(9))
    np.testing.assert_array_equal(obs, sim.reset()[0])
    actions = np.random.default_rng(0).integers(0, 20, params.time_budget)
    for t, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(int(a))
        expected = sim.step(np.array([a]))
        np.testing.assert_array_equal(obs, expected.state[0])
        assert reward == expected.reward[0] and not truncated
        assert terminated == (t == params.time_budget - 1)
        assert obs in env.observation_space


def test_single_env_reset_seed_repeats():
    env = gym.make("reagent_recsys/SweetBitterLTS-v0")
    first = env.reset(seed=3)[0]
    rewards = [env.step(0)[1] for _ in range(5)]
    np.testing.assert_array_equal(env.reset(seed=3)[0], first)
    assert [env.step(0)[1] for _ in range(5)] == rewards


def test_vector_env_matches_vector_lts_with_next_step_autoreset():
    params = LTSParams.preset("sweet_bitter")
    envs = gym.make_vec("reagent_recsys/SweetBitterLTS-v0", num_envs=6)
    assert isinstance(envs, LTSVectorEnv)
    assert envs.observation_space.shape == (6, 22) and envs.action_space.shape == (6,)
    obs, _ = envs.reset(seed=4)
    sim = VectorLTS(params, 6, np.random.default_rng(4))
    np.testing.assert_array_equal(obs, sim.reset())
    act_rng = np.random.default_rng(1)
    for t in range(params.time_budget):
        actions = act_rng.integers(0, 20, 6)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        expected = sim.step(actions)
        np.testing.assert_array_equal(obs, expected.state)
        np.testing.assert_array_equal(rewards, expected.reward)
        np.testing.assert_array_equal(infos["satisfaction"], expected.satisfaction)
        assert terminated.tolist() == [t == params.time_budget - 1] * 6 and not truncated.any()
    obs, rewards, terminated, truncated, _ = envs.step(act_rng.integers(0, 20, 6))  # autoreset step
    np.testing.assert_array_equal(obs, sim.reset())
    assert not rewards.any() and not terminated.any()
    assert envs.observation_space.contains(obs)


def test_vector_env_takes_slates():
    envs = LTSVectorEnv(4, preset="recsim", slate_size=2)
    assert envs.single_action_space.shape == (2,) and envs.action_space.shape == (4, 2)
    envs.reset(seed=0)
    obs, rewards, *_ = envs.step(envs.action_space.sample())
    assert obs.shape == (4, 12) and rewards.shape == (4,) and (rewards > 0).all()
