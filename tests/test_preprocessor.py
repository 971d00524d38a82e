"""The torch Preprocessor against numpy by hand, per type; presence, clamping, TorchScript, artifact round trip."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from reagent_recsys.normalization import (
    BINARY,
    BOXCOX,
    CONTINUOUS,
    DO_NOT_PREPROCESS,
    ENUM,
    PROBABILITY,
    QUANTILE,
    NormalizationArtifact,
    NormalizationParameters,
    Preprocessor,
)

CLIP = 4.0
PARAMS = {  # ids deliberately not grouped by type, ENUMs in the middle and at the end
    1: NormalizationParameters(DO_NOT_PREPROCESS),
    2: NormalizationParameters(ENUM, possible_values=[0.0, 2.0, 5.0]),
    3: NormalizationParameters(BINARY),
    4: NormalizationParameters(PROBABILITY),
    5: NormalizationParameters(CONTINUOUS, mean=2.0, stddev=0.5),
    6: NormalizationParameters(BOXCOX, mean=0.3, stddev=1.5, boxcox_lambda=0.5, boxcox_shift=1.0),
    7: NormalizationParameters(BOXCOX, mean=-0.2, stddev=0.8, boxcox_lambda=0.0, boxcox_shift=0.0),
    8: NormalizationParameters(QUANTILE, quantiles=[0.0, 1.0, 3.0, 10.0]),
    9: NormalizationParameters(CONTINUOUS, mean=-1.0, stddev=3.0),
    10: NormalizationParameters(ENUM, possible_values=[1.0, 7.0]),
}
IDS = sorted(PARAMS)


def artifact() -> NormalizationArtifact:
    return NormalizationArtifact(IDS, dict(PARAMS), clip=CLIP, names={5: "user.satisfaction"})


def expected(values: np.ndarray, presence: np.ndarray) -> np.ndarray:
    """The documented formulas, feature by feature, in numpy (float64)."""
    x = values.astype(np.float64)
    cols = []
    for j, fid in enumerate(IDS):
        p, v = PARAMS[fid], x[:, j]
        if p.feature_type == DO_NOT_PREPROCESS:
            out = [v]
        elif p.feature_type == BINARY:
            out = [(v != 0).astype(float)]
        elif p.feature_type == PROBABILITY:
            q = np.clip(v, 0, 1)
            out = [np.log(np.maximum(q, 1e-5)) - np.log(np.maximum(1 - q, 1e-5))]
        elif p.feature_type == CONTINUOUS:
            out = [np.clip((v - p.mean) / p.stddev, -CLIP, CLIP)]
        elif p.feature_type == BOXCOX:
            y = np.maximum(v + p.boxcox_shift, 1e-4)
            b = np.log(y) if p.boxcox_lambda == 0 else (y**p.boxcox_lambda - 1) / p.boxcox_lambda
            out = [np.clip((b - p.mean) / p.stddev, -CLIP, CLIP)]
        elif p.feature_type == QUANTILE:
            q = np.array(p.quantiles)  # np.interp is exactly the piecewise linear map onto k / m
            out = [np.interp(v, q, np.arange(len(q)) / (len(q) - 1))]
        else:
            out = [(v == pv).astype(float) for pv in p.possible_values]
        cols.extend(o * (presence[:, j] != 0) for o in out)
    return np.stack(cols, axis=1)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    n = 64
    columns = {
        1: rng.normal(0, 5, n),
        2: rng.choice([0.0, 2.0, 5.0, 3.0], n),  # 3 is unseen: all-zero one-hot
        3: rng.choice([0.0, 1.0, 4.0], n),
        4: rng.uniform(-0.1, 1.1, n),  # outside [0, 1]: clamped
        5: rng.normal(2, 1, n),
        6: rng.uniform(-0.5, 20, n),
        7: rng.lognormal(0, 1, n),
        8: rng.uniform(-2, 12, n),
        9: rng.normal(-1, 30, n),  # far out: clamped
        10: rng.choice([1.0, 7.0], n),
    }
    values = np.stack([columns[f] for f in IDS], axis=1).astype(np.float32)
    presence = (rng.uniform(size=values.shape) > 0.2).astype(np.float32)
    return torch.from_numpy(values), torch.from_numpy(presence)


def test_output_dim_and_layout():
    pre = Preprocessor(artifact())
    assert pre.output_dim == artifact().output_dim == 8 + 3 + 2
    out = pre(torch.zeros(2, len(IDS)), torch.ones(2, len(IDS)))
    assert out.shape == (2, 13) and out.dtype == torch.float32


def test_each_type_matches_numpy(batch):
    values, presence = batch
    got = Preprocessor(artifact())(values, presence).numpy()
    want = expected(values.numpy(), presence.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_missing_values_map_to_zero_whatever_their_value(batch):
    values, presence = batch
    pre = Preprocessor(artifact())
    absent = torch.zeros_like(presence)
    assert torch.count_nonzero(pre(values, absent)) == 0
    garbage = torch.where(presence > 0, values, torch.full_like(values, float("nan")))
    torch.testing.assert_close(pre(garbage, presence), pre(values, presence))
    # bool, int8 and float presence give the same result
    torch.testing.assert_close(pre(values, presence.bool()), pre(values, presence))
    torch.testing.assert_close(pre(values, presence.to(torch.int8)), pre(values, presence))


def test_clamping():
    pre = Preprocessor(artifact())
    cols = {f: j for j, f in enumerate(IDS)}
    x = torch.zeros(2, len(IDS))
    x[0, cols[9]], x[1, cols[9]] = 1e6, -1e6
    x[0, cols[4]], x[1, cols[4]] = 0.0, 1.0
    x[0, cols[8]], x[1, cols[8]] = -100.0, 100.0
    x[0, cols[6]], x[1, cols[6]] = -50.0, 0.0
    x[:, cols[7]] = 1.0
    out = pre(x, torch.ones_like(x))
    out_col = {9: 10, 4: 5, 8: 9, 6: 7}  # ENUM 2 takes 3 columns before them
    assert out[:, out_col[9]].tolist() == [CLIP, -CLIP]
    logit = float(np.log((1 - 1e-5) / 1e-5))
    torch.testing.assert_close(out[:, out_col[4]], torch.tensor([-logit, logit]), rtol=1e-4, atol=1e-4)
    assert out[:, out_col[8]].tolist() == [0.0, 1.0]
    floor = (((1e-4) ** 0.5 - 1) / 0.5 - 0.3) / 1.5  # x + shift below the margin is lifted to it
    assert out[0, out_col[6]].item() == pytest.approx(floor, abs=1e-5)
    assert torch.isfinite(out).all()


def test_scripted_equals_eager_and_survives_save(batch):
    values, presence = batch
    pre = Preprocessor(artifact())
    scripted = torch.jit.script(pre)
    torch.testing.assert_close(scripted(values, presence), pre(values, presence), rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(values, presence.bool()), pre(values, presence), rtol=0, atol=0)
    assert loaded.output_dim == pre.output_dim


def test_no_enum_no_quantile_groups_script():
    art = NormalizationArtifact([3, 5], {3: PARAMS[3], 5: PARAMS[5]}, clip=CLIP)
    pre = torch.jit.script(Preprocessor(art))
    out = pre(torch.tensor([[2.0, 3.0]]), torch.ones(1, 2))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0]]))


def test_wrong_shapes_are_named():
    pre = torch.jit.script(Preprocessor(artifact()))
    with pytest.raises(Exception, match=r"shape \(B, 10\)"):
        pre(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(Exception, match="presence shape"):
        pre(torch.zeros(3, 10), torch.zeros(3, 9))


def test_artifact_round_trip(tmp_path, batch):
    path = tmp_path / "normalization.json"
    artifact().save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["feature_ids"] == IDS
    assert [f["id"] for f in data["features"]] == IDS
    loaded = NormalizationArtifact.load(path)
    assert loaded.parameters == PARAMS and loaded.names == {5: "user.satisfaction"} and loaded.clip == CLIP
    values, presence = batch
    torch.testing.assert_close(Preprocessor(loaded)(values, presence), Preprocessor(artifact())(values, presence))


def test_artifact_version_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="identify_normalization"):
        NormalizationArtifact.load(tmp_path / "nope.json")
    path = tmp_path / "normalization.json"
    artifact().save(path)
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99"):
        NormalizationArtifact.load(path)
