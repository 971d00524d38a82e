"""The env interface: every simulator is a VectorEnv, built by one factory and run by one rollout loop."""

from __future__ import annotations

import numpy as np

from reagent_recsys.config import EnvConfig
from reagent_recsys.envs import LTSParams, VectorEnv, VectorLTS, make_env, rollout, run_episodes


def test_vector_lts_is_a_vector_env_built_by_the_factory():
    env = make_env(EnvConfig(type="lts", preset="sweet_bitter"), 3, np.random.default_rng(0))
    assert isinstance(env, VectorLTS) and isinstance(env, VectorEnv)


def test_run_episodes_hands_every_step_to_the_callback():
    params = LTSParams.preset("sweet_bitter")
    env = VectorLTS(params, 4, np.random.default_rng(1))
    steps = []

    def act(state, docs):
        return np.argmax(docs["clickbait"], axis=1), "info"

    taken = run_episodes(env, env.reset(), act, steps.append)
    assert taken == params.time_budget == len(steps)
    assert [s.t for s in steps] == list(range(taken)) and all(s.info == "info" and s.alive.all() for s in steps)
    np.testing.assert_array_equal(steps[1].state, steps[0].result.state)  # the state each action was chosen in
    # lts.rollout goes through the same loop: the same users and actions give the same returns.
    returns = rollout(params, lambda state, docs: np.argmax(docs["clickbait"], axis=1), 4, np.random.default_rng(1))
    np.testing.assert_allclose(returns, np.sum([s.result.reward for s in steps], axis=0))
