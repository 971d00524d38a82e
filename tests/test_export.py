"""workflow.export: the TorchScript policy equals the eager one, respects masks, and loads with torch alone."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from reagent_recsys.export import ExportedPolicy
from reagent_recsys.export import export_policy as export
from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
from reagent_recsys.training.run import train
from reagent_recsys.training.trainer import load_model
from tests.training.helpers import make_run, tiny_config

F, A = 6, 5


@pytest.fixture(scope="module", params=["dqn", "bcq"])
def exported(request, tmp_path_factory) -> tuple[Path, ExportedPolicy]:
    out = make_run(tmp_path_factory.mktemp(request.param))
    config = tiny_config(out, algorithm=request.param, bcq_threshold=0.5)
    config.export.temperature = 0.7
    train(config)
    result = export(config)
    assert Path(result["policy"]).exists()
    model, _ = load_model(out / "training" / "model.pt")
    eager = ExportedPolicy(Preprocessor(NormalizationArtifact.load(out / "normalization.json")), model, 0.7, 0.5)
    return out, eager.eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(64, F, generator=g) * 2
    presence = (torch.rand(64, F, generator=g) > 0.2).to(torch.float32)
    mask = torch.rand(64, A, generator=g) > 0.4
    mask[:, 0] = True
    return state, presence, mask


def test_scripted_equals_eager(exported):
    out, eager = exported
    scripted = torch.jit.load(str(out / "export" / "policy.pt"))
    state, presence, mask = inputs()
    with torch.no_grad():
        for args in ((state,), (state, presence), (state, presence, mask)):
            a, b = scripted(*args), eager(*args)
            torch.testing.assert_close(a["q_values"], b["q_values"])
            torch.testing.assert_close(a["action_probabilities"], b["action_probabilities"])
            assert torch.equal(a["action"], b["action"])


def test_masks_presence_and_temperature(exported):
    out, _ = exported
    policy = torch.jit.load(str(out / "export" / "policy.pt"))
    state, presence, mask = inputs(1)
    result = policy(state, presence, mask)
    assert mask.gather(1, result["action"][:, None]).all()
    probs = result["action_probabilities"]
    assert (probs[~mask] == 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(64))
    # presence: an absent feature behaves like a present one normalized to 0 (value = mean 0 here)
    zeroed = policy(state * presence)["q_values"]
    torch.testing.assert_close(policy(state, presence)["q_values"], zeroed)
    assert not torch.allclose(policy(state)["q_values"], zeroed)
    if not policy.use_bcq:
        q = result["q_values"].masked_fill(~mask, float("-inf"))
        torch.testing.assert_close(probs, torch.softmax(q / 0.7, dim=1))
        torch.testing.assert_close(result["action"], q.argmax(1))


def test_metadata(exported):
    out, _ = exported
    meta = json.loads((out / "export" / "metadata.json").read_text())
    assert meta["feature_ids"] == [1, 2, 3, 4, 5, 6]
    assert meta["feature_names"] == [f"feature_{i}" for i in range(1, 7)]
    assert meta["action_names"] == ["0", "1", "2", "3", "4"]
    assert meta["normalization"]["feature_ids"] == meta["feature_ids"]
    assert meta["training_config"]["hidden_sizes"] == [32, 16]
    assert meta["export_config"]["temperature"] == 0.7
    assert "torch" in meta["versions"]
    extra = {"metadata.json": ""}
    torch.jit.load(str(out / "export" / "policy.pt"), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == meta


FRESH = """
import importlib.util, json, sys
sys.path.append({site!r})
assert importlib.util.find_spec("reagent_recsys") is None, "reagent_recsys must not be importable here"
import torch
policy = torch.jit.load({policy!r})
torch.manual_seed(0)
state = torch.randn(8, {F})
out = policy(state, torch.ones(8, {F}), torch.ones(8, {A}, dtype=torch.bool))
print(json.dumps({{"action": out["action"].tolist(), "q": out["q_values"].tolist(),
                   "modules": sorted(m for m in sys.modules if m.startswith("reagent"))}}))
"""


def test_loads_and_acts_in_a_process_with_only_torch(exported, tmp_path):
    out, eager = exported
    code = FRESH.format(site=sysconfig.get_paths()["purelib"], policy=str(out / "export" / "policy.pt"), F=F, A=A)
    # -I: no cwd / PYTHONPATH / user site; -S: no site-packages .pth files (the editable install of this project).
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["modules"] == []
    torch.manual_seed(0)
    state = torch.randn(8, F)
    expected = eager(state, torch.ones(8, F), torch.ones(8, A, dtype=torch.bool))
    assert answer["action"] == expected["action"].tolist()
    torch.testing.assert_close(torch.tensor(answer["q"]), expected["q_values"].detach())


def test_export_without_model_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="workflow.train"):
        export(tiny_config(make_run(tmp_path)))
