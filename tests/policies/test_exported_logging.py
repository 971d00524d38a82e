"""The `exported` logging policy: a TorchScript export served greedy / softmax / epsilon-greedy by workflow.offline_gym.

Its logged propensities are checked against the served policy: recomputed from the raw policy.pt module (a fresh
torch.jit.load, numpy softmax / epsilon-greedy), and against the real HTTP server (workflow.serve in a child process)
answering the same states. The export is a real one (workflow.export's module and metadata over the simulator's
features) with seeded random weights: the check is of the serving rule, not of the policy's quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reagent_recsys.artifacts import package_versions
from reagent_recsys.config import ConfigError, EnvConfig, LoggingConfig, validate_config
from reagent_recsys.envs.base import make_env
from reagent_recsys.evaluation.ground_truth import document_columns, logging_probabilities
from reagent_recsys.export import METADATA_FILE, ExportedPolicy, metadata_dict, script_policy
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.normalization import (
    CONTINUOUS,
    NormalizationArtifact,
    NormalizationParameters,
    Preprocessor,
)
from reagent_recsys.policies import build_policy
from reagent_recsys.serving.policy import CANDIDATE_NAME
from reagent_recsys.serving.process import ServerProcess
from reagent_recsys.training.networks import DQNModel
from workflow.offline_gym import offline_gym

TEMPERATURE, EPSILON = 0.05, 0.3
# float32 Q of the same state differs in its last bits with the batch it is computed in (BLAS blocking): 1e-7
# relative here, amplified by 1 / temperature in softmax. Everything else must agree exactly.
RTOL = 1e-5
EPISODES, STEPS, CANDIDATES = 24, 10, 20  # the sweet_bitter preset: 10 steps, 20 candidates


@pytest.fixture(scope="module")
def export_run(tmp_path_factory) -> Path:
    """<run>/export/policy.pt over the simulator's features (identity normalization, seeded random Q-network)."""
    out = tmp_path_factory.mktemp("exported_logger")
    probe = make_env(EnvConfig(), 1, np.random.default_rng(0))
    ids = [f.id for f in probe.features]
    artifact = NormalizationArtifact(ids, {f: NormalizationParameters(CONTINUOUS) for f in ids},
                                     names={f.id: f.name for f in probe.features})
    torch.manual_seed(0)
    model = DQNModel(artifact.output_dim, probe.num_actions, [32])
    metadata = metadata_dict(ids, artifact.names, [str(a) for a in range(probe.num_actions)], artifact.to_json(),
                             {}, {}, package_versions())
    (out / "export").mkdir()
    torch.jit.save(script_policy(ExportedPolicy(Preprocessor(artifact), model)), str(out / "export" / "policy.pt"),
                   _extra_files={METADATA_FILE: json.dumps(metadata)})
    (out / "export" / METADATA_FILE).write_text(json.dumps(metadata))
    return out


def log_with(tmp_path: Path, policy: dict, name: str = "logs") -> object:
    config = validate_config({"output_dir": str(tmp_path / name), "seed": 3, "env": {},
                              "logging": {"num_episodes": EPISODES, "batch_size": 10, "policy": policy}})
    offline_gym(config)
    return read_mdp(tmp_path / name / "mdp").sort_by([("mdp_id", "ascending"), ("sequence_number", "ascending")])


def served_outputs(export_run: Path, table) -> tuple[np.ndarray, np.ndarray]:
    """Q (R, A) float64 and greedy action (R,) of the raw policy.pt on each logged row's state_features."""
    module = torch.jit.load(str(export_run / "export" / "policy.pt"))
    ids = json.loads((export_run / "export" / METADATA_FILE).read_text())["feature_ids"]
    state = np.array([[dict(row)[f] for f in ids] for row in table["state_features"].to_pylist()],
                     dtype=np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(state))
    return out["q_values"].numpy().astype(np.float64), out["action"].numpy()


def softmax(q: np.ndarray, temperature: float) -> np.ndarray:
    z = q / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("exploration", ["softmax", "epsilon_greedy", "greedy"])
def test_logged_propensities_are_the_served_policys_probabilities(export_run, tmp_path, exploration):
    policy = {"type": "exported", "path": str(export_run / "export"), "exploration": exploration,
              "temperature": TEMPERATURE, "epsilon": EPSILON}
    table = log_with(tmp_path, policy)
    assert table.num_rows == EPISODES * STEPS
    q, greedy = served_outputs(export_run, table)
    actions = np.array([int(a) for a in table["action"].to_pylist()])
    rows = np.arange(len(actions))
    if exploration == "softmax":
        expected = softmax(q, TEMPERATURE)[rows, actions]
    elif exploration == "epsilon_greedy":
        expected = EPSILON / CANDIDATES + (1 - EPSILON) * (actions == greedy)
        assert 0.1 < (actions != greedy).mean() < 0.5  # eps * 19/20 of the steps explore
    else:
        expected = np.ones(len(actions))
        np.testing.assert_array_equal(actions, greedy)
    logged = np.array(table["action_probability"].to_pylist())
    np.testing.assert_allclose(logged, expected, rtol=RTOL if exploration == "softmax" else 0, atol=0)
    if exploration == "softmax":  # the check is not vacuous: the distribution is far from uniform and from greedy
        assert logged.max() > 5 / CANDIDATES and logged.min() < 0.5 / CANDIDATES
        assert len(set(actions.tolist())) > 3


def test_draws_follow_the_logged_probabilities(export_run):
    """One state repeated 20,000 times: each candidate's count is within 5 sigma of its probability's sum."""
    logger = build_policy(LoggingConfig(policy={
        "type": "exported", "path": str(export_run / "export" / "policy.pt"), "exploration": "softmax",
        "temperature": TEMPERATURE}).policy)
    env = make_env(EnvConfig(), 1, np.random.default_rng(5))
    logger.bind_state([f.id for f in env.features])
    b = 20_000
    state = np.repeat(env.reset(), b, axis=0)
    docs = {k: np.repeat(v, b, axis=0) for k, v in env.doc_features.items()}
    rng = np.random.default_rng(0)
    probs = logger.probabilities(docs, state)
    slates, propensity = logger.act(docs, rng, state)
    np.testing.assert_array_equal(propensity, probs[np.arange(b), slates[:, 0]])
    counts = np.bincount(slates[:, 0], minlength=CANDIDATES)
    expected, sd = probs.sum(axis=0), np.sqrt((probs * (1 - probs)).sum(axis=0))
    assert (np.abs(counts - expected) <= 5 * sd + 1).all(), (counts, expected)


def test_the_http_server_gives_the_same_probabilities(export_run, tmp_path):
    """workflow.serve (softmax) answers logged states; its propensity = the logger's probability of its action."""
    policy = {"type": "exported", "path": str(export_run / "export"), "exploration": "softmax",
              "temperature": TEMPERATURE}
    table = log_with(tmp_path, policy)
    logger = build_policy(LoggingConfig(policy=policy).policy)
    env_ids = [f.id for f in make_env(EnvConfig(), 1, np.random.default_rng(0)).features]
    logger.bind_state(env_ids)
    metadata = json.loads((export_run / "export" / METADATA_FILE).read_text())
    names = dict(zip(metadata["feature_ids"], metadata["feature_names"], strict=True))
    rows = table.slice(0, 40).to_pylist()
    decisions = []
    for row in rows:
        values = dict(row["state_features"])
        context = {names[f]: v for f, v in values.items() if not CANDIDATE_NAME.match(names[f])}
        clickbait = [values[env_ids[-CANDIDATES + j]] for j in range(CANDIDATES)]
        decisions.append({"session_id": row["mdp_id"], "step": row["sequence_number"], "context": context,
                          "candidates": [{"features": {"clickbait": c}} for c in clickbait]})
    with ServerProcess(tmp_path / "server", export_run, exploration="softmax", temperature=TEMPERATURE) as server:
        status, answer = server.client().post("/v1/act", {"decisions": decisions})
    assert status == 200, answer
    state = np.array([[dict(r["state_features"])[f] for f in env_ids] for r in rows], dtype=np.float32)
    docs = {"clickbait": state[:, -CANDIDATES:].astype(np.float64)}
    probs = logger.probabilities(docs, state)  # (40, N)
    served = np.array([int(d["action"]) for d in answer["decisions"]])
    np.testing.assert_allclose([d["propensity"] for d in answer["decisions"]], probs[np.arange(len(rows)), served],
                               rtol=RTOL, atol=0)


def test_a_mixture_with_an_exported_expert_logs_the_true_episode_probability(export_run, tmp_path):
    """20% of episodes from the epsilon-greedy export, 80% random: the product of an episode's propensities is
    0.2 prod_t pi_expert(a_t | s_t) + 0.8 (1/N)^T, the true probability of its actions (MixturePolicy's promise)."""
    expert = {"type": "exported", "path": str(export_run / "export"), "exploration": "epsilon_greedy",
              "epsilon": EPSILON}
    table = log_with(tmp_path, {"type": "mixture", "components": [{"weight": 0.2, "policy": expert},
                                                                   {"weight": 0.8, "policy": {"type": "random"}}]})
    _, greedy = served_outputs(export_run, table)
    actions = np.array([int(a) for a in table["action"].to_pylist()])
    pi_expert = (EPSILON / CANDIDATES + (1 - EPSILON) * (actions == greedy)).reshape(EPISODES, STEPS)
    truth = 0.2 * pi_expert.prod(axis=1) + 0.8 * (1 / CANDIDATES) ** STEPS
    logged = np.array(table["action_probability"].to_pylist()).reshape(EPISODES, STEPS).prod(axis=1)
    np.testing.assert_allclose(logged, truth, rtol=1e-9)
    component = np.array([dict(m)["policy_component"] for m in table["metrics"].to_pylist()])
    assert set(component.tolist()) == {0.0, 1.0}  # both kinds of episodes were drawn


@pytest.mark.parametrize(("make_policy", "field"), [
    (lambda run: {"type": "exported", "path": str(run / "nowhere.pt")}, "logging.policy.path: no exported policy"),
    (lambda run: {"type": "exported", "path": str(run / "garbage.pt")}, "logging.policy.path: .* is not an exported"),
    (lambda run: {"type": "mixture", "components": [
        {"weight": 0.5, "policy": {"type": "random"}},
        {"weight": 0.5, "policy": {"type": "exported", "path": str(run / "missing")}}]},
     r"logging.policy.components\[1\].policy.path: no exported policy"),
])
def test_a_bad_path_is_a_config_error_naming_the_field(export_run, tmp_path, make_policy, field):
    (export_run / "garbage.pt").write_bytes(b"not a torchscript archive")
    config = validate_config({"output_dir": str(tmp_path / "out"), "env": {},
                              "logging": {"num_episodes": 4, "policy": make_policy(export_run)}})
    with pytest.raises(ConfigError, match=field):
        offline_gym(config)
    assert not (tmp_path / "out" / "mdp").exists()  # nothing written


def test_a_policy_trained_on_other_features_is_a_config_error(export_run):
    logger = build_policy(LoggingConfig(policy={"type": "exported", "path": str(export_run / "export")}).policy)
    ids = [f.id for f in make_env(EnvConfig(), 1, np.random.default_rng(0)).features]
    with pytest.raises(ConfigError, match=r"logging.policy.path: the state has no feature doc\[19\].clickbait"):
        logger.bind_state(ids[:-1])


def test_probabilities_on_logged_states_by_table_ids(export_run, tmp_path):
    """The CPE self-check path (`logging_probabilities` with the table's ids, columns in another order) gives the
    exported logger's logged propensities back."""
    policy = {"type": "exported", "path": str(export_run / "export"), "exploration": "epsilon_greedy",
              "epsilon": EPSILON}
    table = log_with(tmp_path, policy)
    env = make_env(EnvConfig(), 1, np.random.default_rng(0))
    ids = [f.id for f in env.features][::-1]  # table columns in another order than the simulator's
    state = np.array([[dict(r)[f] for f in ids] for r in table["state_features"].to_pylist()])
    probs = logging_probabilities(build_policy(LoggingConfig(policy=policy).policy), state,
                                  document_columns(ids, env.features, CANDIDATES), np.arange(CANDIDATES), ids)
    actions = np.array([int(a) for a in table["action"].to_pylist()])
    np.testing.assert_array_equal(probs[np.arange(len(actions)), actions], table["action_probability"].to_pylist())
