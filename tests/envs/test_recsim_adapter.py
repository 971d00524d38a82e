"""google recsim behind the VectorLTS interface: shapes, seeding, built-in and user envs, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reagent_recsys.config import ConfigError, EnvConfig
from reagent_recsys.envs import recsim_adapter
from reagent_recsys.envs.lts import LTSParams, VectorLTS, feature_specs
from reagent_recsys.envs.recsim_adapter import RecsimVectorEnv, make_env, register_recsim_env

pytestmark = pytest.mark.recsim


def recsim_config(**fields) -> EnvConfig:
    return EnvConfig(type="recsim", **fields)


def run_episode(env, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random slates until every user is done; the states and rewards seen."""
    states, rewards = [env.reset()], []
    while env.active.any():
        result = env.step(rng.integers(0, env.num_actions, size=env.num_users))
        states.append(result.state)
        rewards.append(result.reward)
    return states, rewards


def test_lts_shapes_features_and_dtypes_match_vector_lts():
    cfg = recsim_config(preset="sweet_bitter")
    env = make_env(cfg, 3, np.random.default_rng(0))
    params = LTSParams.from_config(cfg)
    assert isinstance(env, RecsimVectorEnv)
    assert env.features == feature_specs(params)  # same ids and names as our simulator
    assert env.num_actions == params.num_candidates == 20

    state = env.reset()
    assert state.shape == (3, len(env.features)) and state.dtype == np.float32
    clickbait = env.doc_features["clickbait"]
    assert set(env.doc_features) == {"clickbait"} and clickbait.shape == (3, 20)
    doc_columns = [i for i, f in enumerate(env.features) if f.kind == "document"]
    np.testing.assert_allclose(state[:, doc_columns], clickbait, rtol=1e-6)
    # sweet_bitter's world: fixed starting NPE 1.0, even slots sweet, odd slots bitter, time feature -0.5.
    names = [f.name for f in env.features]
    np.testing.assert_allclose(state[:, names.index("user.satisfaction")], 1 / (1 + np.exp(-0.9)), rtol=1e-6)
    np.testing.assert_allclose(state[:, names.index("time.progress")], -0.5)
    assert (clickbait[:, 0::2] >= 0.8).all() and (clickbait[:, 1::2] <= 0.2).all()

    for t in range(params.time_budget):
        result = env.step(np.zeros((3, 1), dtype=np.int64))
        assert result.state.shape == state.shape and result.state.dtype == np.float32
        for name in ("reward", "click", "engagement", "satisfaction"):
            assert getattr(result, name).shape == (3,) and getattr(result, name).dtype == np.float64
        assert result.done.dtype == bool and result.done.all() == (t == params.time_budget - 1)
    np.testing.assert_array_equal(result.click, 1.0)
    np.testing.assert_array_equal(result.reward, result.engagement)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(3, dtype=np.int64))


def test_same_seed_same_run_regardless_of_global_rng():
    cfg = recsim_config(preset="recsim", time_budget=5)
    np.random.seed(1)
    first = run_episode(make_env(cfg, 4, np.random.default_rng(7)), np.random.default_rng(0))
    np.random.seed(2)  # recsim draws from np.random: the adapter must not depend on the caller's global state
    caller_state = np.random.get_state()[1].copy()
    second = run_episode(make_env(cfg, 4, np.random.default_rng(7)), np.random.default_rng(0))
    np.testing.assert_array_equal(np.random.get_state()[1], caller_state)  # and must leave it alone
    other = run_episode(make_env(cfg, 4, np.random.default_rng(8)), np.random.default_rng(0))
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.stack(first[1]), np.stack(other[1]))


@pytest.mark.parametrize(
    ("name", "doc_keys"),
    [
        ("long_term_satisfaction", {"clickbait"}),
        ("interest_evolution", {f"feature_{k}" for k in range(20)}),
        ("interest_exploration", {"quality", "cluster_id"}),
    ],
)
def test_builtin_envs_build_and_step(name, doc_keys):
    cfg = recsim_config(recsim_env=name, preset="recsim", time_budget=8, num_candidates=5, slate_size=2)
    env = make_env(cfg, 3, np.random.default_rng(0))
    state = env.reset()
    assert set(env.doc_features) == doc_keys
    assert all(v.shape == (3, 5) for v in env.doc_features.values())
    assert state.shape == (3, len(env.features)) == (3, len({f.id for f in env.features}))
    rewards = []
    for _ in range(8):
        result = env.step(np.tile([0, 1], (3, 1)))
        rewards.append(result.reward)
        assert result.state.shape == state.shape and np.isfinite(result.state).all()
    assert result.done.all() and not env.active.any()
    assert np.isfinite(np.stack(rewards)).all()


def test_interest_evolution_users_end_at_different_times_and_are_masked():
    cfg = recsim_config(recsim_env="interest_evolution", preset="recsim", time_budget=1000, slate_size=2)
    env = make_env(cfg, 6, np.random.default_rng(3))
    state = env.reset()
    ended_at = np.full(6, -1)
    for t in range(1000):
        before = env.active
        result = env.step(np.tile([0, 1], (6, 1)))
        finished_before = ~before
        assert (result.reward[finished_before] == 0).all() and result.done[finished_before].all()
        np.testing.assert_array_equal(result.state[finished_before], state[finished_before])  # frozen
        assert np.isnan(result.satisfaction).all()  # interest_evolution users have no satisfaction
        ended_at[before & result.done] = t + 1
        state = result.state
        if not env.active.any():
            break
    assert (ended_at > 0).all() and ended_at.max() < 1000  # recsim ended every episode (its time budget)
    assert len(set(ended_at.tolist())) > 1
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(6, dtype=np.int64))


def test_observed_engagement_is_clipped_like_recsim_but_reward_is_not():
    cfg = recsim_config(preset="recsim", choc_mean=12.0, kale_mean=12.0)  # exp(~6 +- 1): often above 100
    env = make_env(cfg, 50, np.random.default_rng(0))
    env.reset()
    result = env.step(np.zeros(50, dtype=np.int64))
    observed = result.state[:, [f.name for f in env.features].index("response.engagement")]
    assert (result.reward > 100).any() and (result.reward < 100).any()
    np.testing.assert_allclose(observed, np.minimum(result.reward, 100.0), rtol=1e-6)
    np.testing.assert_array_equal(result.state[:, [f.name for f in env.features].index("response.click")], 1.0)


def test_resample_documents_false_keeps_candidates_for_the_episode_only():
    cfg = recsim_config(preset="recsim", time_budget=3, resample_documents=False)
    env = make_env(cfg, 2, np.random.default_rng(0))
    env.reset()
    first = env.doc_features["clickbait"]
    env.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(env.doc_features["clickbait"], first)
    env.reset()
    assert not np.array_equal(env.doc_features["clickbait"], first)


def test_user_factory_from_a_plugin_module(tmp_path, monkeypatch):
    monkeypatch.setattr(recsim_adapter, "_REGISTRY", dict(recsim_adapter._REGISTRY))
    (tmp_path / "my_recsim_plugin.py").write_text(
        "from recsim.environments import interest_exploration\n"
        "from reagent_recsys.envs.recsim_adapter import register_recsim_env\n"
        "CALLS = []\n"
        "def factory(config):\n"
        "    CALLS.append(config)\n"
        "    return interest_exploration.create_environment(config)\n"
        "register_recsim_env('my_exploration', factory)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = recsim_config(recsim_env="my_exploration", recsim_plugins=["my_recsim_plugin"], num_candidates=4)
    env = make_env(cfg, 2, np.random.default_rng(0))
    import my_recsim_plugin

    assert len(my_recsim_plugin.CALLS) == 2 and my_recsim_plugin.CALLS[0]["num_candidates"] == 4
    assert my_recsim_plugin.CALLS[0]["seed"] != my_recsim_plugin.CALLS[1]["seed"]
    assert my_recsim_plugin.CALLS[0]["env_config"] is cfg
    env.reset()
    assert env.step(np.array([0, 3])).state.shape == (2, len(env.features))
    assert "my_exploration" in recsim_adapter.registered_recsim_envs()


def test_user_factory_registered_in_process(monkeypatch):
    monkeypatch.setattr(recsim_adapter, "_REGISTRY", dict(recsim_adapter._REGISTRY))
    builtin = recsim_adapter._REGISTRY["long_term_satisfaction"]

    def all_kale(config):  # the LTS world with a fixed starting NPE set by the user
        return builtin({**config, "params": dataclasses.replace(config["params"], initial_npe=-3.0)})

    register_recsim_env("all_kale_start", all_kale)
    env = make_env(recsim_config(recsim_env="all_kale_start", preset="strong"), 2, np.random.default_rng(0))
    state = env.reset()
    np.testing.assert_allclose(state[:, 0], 1 / (1 + np.exp(0.06 * 3.0)), rtol=1e-6)
    assert env.features == feature_specs(LTSParams.from_config(EnvConfig(preset="strong")))


def test_unknown_env_name_lists_registered_ones():
    with pytest.raises(ConfigError) as info:
        make_env(recsim_config(recsim_env="interest_evolutoin"), 1, np.random.default_rng(0))
    assert str(info.value) == (
        "env.recsim_env: unknown recsim environment 'interest_evolutoin'; "
        "registered: interest_evolution, interest_exploration, long_term_satisfaction"
    )


def test_missing_plugin_names_the_field():
    with pytest.raises(ConfigError, match=r"env\.recsim_plugins: cannot import 'no_such_plugin_mod'"):
        make_env(recsim_config(recsim_plugins=["no_such_plugin_mod"]), 1, np.random.default_rng(0))


def test_bad_slates_are_rejected_with_shape_or_values():
    env = make_env(recsim_config(preset="recsim"), 2, np.random.default_rng(0))
    env.reset()
    with pytest.raises(ValueError, match=r"slates must have shape \(2,\) or \(2, k\)"):
        env.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"1 entries outside \[0, 10\), e.g. \[10\]"):
        env.step(np.array([0, 10]))


def test_make_env_dispatches_on_type():
    env = make_env(EnvConfig(type="lts"), 2, np.random.default_rng(0))
    assert isinstance(env, VectorLTS)
