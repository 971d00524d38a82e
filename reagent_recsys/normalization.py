"""The normalization artifact: per-feature types and parameters, identified from statistics, and the torch
`Preprocessor` that applies them (baked into the exported TorchScript policy).

Identification follows ReAgent's published rules (``reagent/preprocessing/identify_types.py`` and
``normalization.py``), in this order, with these fixes:

1. ``normalization.overrides`` forces a type (a type that cannot be fitted is a config error naming the override).
2. A constant feature (min == max) -> CONTINUOUS with mean = the value and stddev 1: it maps to 0, and a value that
   differs at serving time passes through unscaled (ReAgent calls it BINARY or a no-op).
3. Only 0 and 1 -> BINARY; all in [0, 1] -> PROBABILITY; non-negative integers with at most
   ``max_unique_enum_values`` distinct values -> ENUM.
4. Otherwise CONTINUOUS, unless the bounded sample says otherwise: BOXCOX when the fitted lambda is outside
   [0.9, 1.1] and the transform makes the sample much more normal (K2 / 10, and K2 <= ``quantile_k2_threshold``);
   else QUANTILE when the sample is far from normal (K2 > ``quantile_k2_threshold``).

Fixes: the standard deviation is the real one (ReAgent floors it at 1), guarded only against zero; a feature with
fewer than ``MIN_SAMPLES_TO_IDENTIFY`` values warns (`RareFeatureWarning`) and is identified from what exists
(rules 2-3, else CONTINUOUS without the normality tests) instead of aborting the run.

What the Preprocessor outputs per type (a missing value, presence 0, always maps to 0):

- DO_NOT_PREPROCESS: x.   BINARY: 1 if x != 0 else 0.
- PROBABILITY: x clamped to [0, 1], then log(max(x, 1e-5)) - log(max(1 - x, 1e-5)) (a logit within +-11.513).
- CONTINUOUS: clamp((x - mean) / stddev, -clip, clip).
- BOXCOX: y = max(x + shift, 1e-4); b = (y^lambda - 1) / lambda (log y if lambda == 0); clamp((b - mean) / stddev).
- QUANTILE: piecewise linear on the boundaries q_0 < ... < q_m: (k + (x - q_k) / (q_{k+1} - q_k)) / m in [0, 1].
- ENUM: one-hot over possible_values (k columns, all zero for an unseen value); every other type is one column.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reagent_recsys.artifacts import write_json_atomic
from reagent_recsys.config import ConfigError, NormalizationConfig

logger = logging.getLogger(__name__)

BINARY = "BINARY"
PROBABILITY = "PROBABILITY"
CONTINUOUS = "CONTINUOUS"
BOXCOX = "BOXCOX"
QUANTILE = "QUANTILE"
ENUM = "ENUM"
DO_NOT_PREPROCESS = "DO_NOT_PREPROCESS"
FEATURE_TYPES = (DO_NOT_PREPROCESS, BINARY, PROBABILITY, CONTINUOUS, BOXCOX, QUANTILE, ENUM)

ARTIFACT_VERSION = 1
MIN_SAMPLES_TO_IDENTIFY = 20
BOX_COX_MARGIN = 1e-4
BOX_COX_MAX_STDDEV = 1e8
PROBABILITY_EPS = 1e-5


class RareFeatureWarning(UserWarning):
    """A feature has too few values for the normality tests; it is identified from what exists."""


@dataclass
class FeatureStatistics:
    """What the Spark stage measured for one feature (the `sample` is used for fitting, not saved)."""

    count: int
    min: float
    max: float
    mean: float
    stddev: float  # sample standard deviation; nan when count < 2
    skewness: float
    quantiles: list[float]  # approximate quantiles at k / quantile_size, k = 0..quantile_size
    distinct_values: list[float] | None  # sorted; None when there are more than max_unique_enum_values
    approx_distinct: int
    sample: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "sample"}
        out["sample_size"] = int(len(self.sample))
        return _finite_or_none(out)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureStatistics:
        data = {k: (math.nan if v is None and k in ("mean", "stddev", "skewness") else v) for k, v in data.items()}
        data.pop("sample_size", None)
        return cls(**data)


@dataclass(frozen=True)
class NormalizationParameters:
    """The type of one feature and what the Preprocessor needs to apply it."""

    feature_type: str
    mean: float = 0.0
    stddev: float = 1.0
    boxcox_lambda: float | None = None
    boxcox_shift: float | None = None
    quantiles: list[float] | None = None  # strictly increasing, at least 2 (QUANTILE)
    possible_values: list[float] | None = None  # sorted (ENUM)
    min_value: float | None = None
    max_value: float | None = None

    @property
    def width(self) -> int:
        """Output columns of this feature in the Preprocessor."""
        return len(self.possible_values or ()) if self.feature_type == ENUM else 1


@dataclass
class NormalizationArtifact:
    """`normalization.json`: features in a fixed order (`feature_ids`), their parameters, names and statistics."""

    feature_ids: list[int]
    parameters: dict[int, NormalizationParameters]
    clip: float = 11.513
    names: dict[int, str] = field(default_factory=dict)
    statistics: dict[int, FeatureStatistics] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    version: int = ARTIFACT_VERSION

    @property
    def output_dim(self) -> int:
        return sum(self.parameters[f].width for f in self.feature_ids)

    def to_json(self) -> dict[str, Any]:
        features = []
        for fid in self.feature_ids:
            entry: dict[str, Any] = {"id": fid, "name": self.names.get(fid), **asdict(self.parameters[fid])}
            if fid in self.statistics:
                entry["statistics"] = self.statistics[fid].to_json()
            features.append(entry)
        return {"version": self.version, "feature_ids": list(self.feature_ids), "clip": self.clip,
                "features": features, "inputs": self.inputs}

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> NormalizationArtifact:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no normalization artifact; run workflow.identify_normalization first")
        data = json.loads(path.read_text())
        if data.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"{path}: artifact version {data.get('version')!r}, this code reads {ARTIFACT_VERSION}")
        params, names, stats = {}, {}, {}
        for entry in data["features"]:
            fid = int(entry.pop("id"))
            name = entry.pop("name", None)
            if name is not None:
                names[fid] = name
            if "statistics" in entry:
                stats[fid] = FeatureStatistics.from_json(entry.pop("statistics"))
            params[fid] = NormalizationParameters(**entry)
        return cls([int(f) for f in data["feature_ids"]], params, float(data["clip"]), names, stats,
                   data.get("inputs", {}), int(data["version"]))


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: statistics that are undefined (e.g. the skewness of a constant) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ identification
def identify_type(stats: FeatureStatistics, max_unique_enum_values: int) -> str:
    """ReAgent's rule order on exact statistics: BINARY, PROBABILITY, ENUM, else CONTINUOUS."""
    distinct = stats.distinct_values
    if distinct is not None and set(distinct) <= {0.0, 1.0}:
        return BINARY
    if stats.min >= 0.0 and stats.max <= 1.0:
        return PROBABILITY
    if (distinct is not None and len(distinct) <= max_unique_enum_values and stats.min >= 0.0
            and all(float(v).is_integer() for v in distinct)):
        return ENUM
    return CONTINUOUS


def _guarded_stddev(stddev: float) -> float:
    return float(stddev) if math.isfinite(stddev) and stddev > 0.0 else 1.0


def _boxcox_fit(sample: np.ndarray, shift: float) -> tuple[np.ndarray, float]:
    from scipy import stats as sps

    transformed, lam = sps.boxcox(np.maximum(sample + shift, BOX_COX_MARGIN))
    return transformed, float(lam)


def _quantile_boundaries(stats: FeatureStatistics) -> list[float]:
    return sorted({float(q) for q in stats.quantiles} | {float(stats.min), float(stats.max)})


def identify_parameters(
    feature_id: int, stats: FeatureStatistics, config: NormalizationConfig, forced: str | None = None
) -> NormalizationParameters:
    """The type and parameters of one feature (see the module docstring for the rules)."""
    from scipy import stats as sps

    where = f"normalization.overrides.{feature_id}"
    constant = stats.min == stats.max
    bounds = {"min_value": float(stats.min), "max_value": float(stats.max)}
    rare = stats.count < MIN_SAMPLES_TO_IDENTIFY
    if rare and forced is None:
        message = (f"feature {feature_id}: only {stats.count} values (fewer than {MIN_SAMPLES_TO_IDENTIFY}); "
                   "identified from what exists, without normality tests")
        warnings.warn(message, RareFeatureWarning, stacklevel=3)
        logger.warning(message)
    if forced is None and constant:
        return NormalizationParameters(CONTINUOUS, mean=float(stats.min), stddev=1.0, **bounds)
    feature_type = forced or identify_type(stats, config.max_unique_enum_values)
    if feature_type in (BINARY, PROBABILITY, DO_NOT_PREPROCESS):
        return NormalizationParameters(feature_type, **bounds)
    if feature_type == ENUM:
        if stats.distinct_values is None:
            raise ConfigError(f"{where}: ENUM needs at most normalization.max_unique_enum_values "
                              f"({config.max_unique_enum_values}) distinct values; feature {feature_id} has "
                              f"about {stats.approx_distinct}")
        return NormalizationParameters(ENUM, possible_values=[float(v) for v in stats.distinct_values], **bounds)
    if forced in (BOXCOX, QUANTILE) and constant:
        raise ConfigError(f"{where}: {forced} cannot be fitted to feature {feature_id}: it is constant "
                          f"({stats.min:g})")

    # A constant's computed stddev is rounding noise (e.g. 4e-16), not a scale: use 1 (forced CONTINUOUS).
    continuous = NormalizationParameters(CONTINUOUS, mean=float(stats.mean),
                                         stddev=1.0 if constant else _guarded_stddev(stats.stddev), **bounds)
    quantile = NormalizationParameters(QUANTILE, quantiles=_quantile_boundaries(stats), **bounds)
    if forced == CONTINUOUS:
        return continuous
    if forced == QUANTILE:
        return quantile
    sample = np.asarray(stats.sample, dtype=np.float64)
    shift = 0.0 if stats.min > 0 else -float(stats.min)
    if forced == BOXCOX:
        if len(np.unique(sample)) < 2:
            raise ConfigError(f"{where}: BOXCOX needs a sample with two distinct values for feature {feature_id}")
        transformed, lam = _boxcox_fit(sample, shift)
        return NormalizationParameters(BOXCOX, mean=float(transformed.mean()),
                                       stddev=_guarded_stddev(float(transformed.std(ddof=1))),
                                       boxcox_lambda=lam, boxcox_shift=shift, **bounds)

    if rare or len(sample) < MIN_SAMPLES_TO_IDENTIFY or len(np.unique(sample)) < 2:
        return continuous  # too little to test normality (a tiny sample_size, or a rare feature: warned above)
    k2_original = float(sps.normaltest(sample).statistic)
    if not config.skip_box_cox:
        transformed, lam = _boxcox_fit(sample, shift)
        k2_boxcox = float(sps.normaltest(transformed).statistic)
        bc_stddev = float(transformed.std(ddof=1))
        if ((lam < 0.9 or lam > 1.1) and k2_original > 10 * k2_boxcox
                and k2_boxcox <= config.quantile_k2_threshold
                and math.isfinite(bc_stddev) and 0 < bc_stddev < BOX_COX_MAX_STDDEV):
            return NormalizationParameters(BOXCOX, mean=float(transformed.mean()), stddev=bc_stddev,
                                           boxcox_lambda=lam, boxcox_shift=shift, **bounds)
    if k2_original > config.quantile_k2_threshold:
        return quantile
    return continuous


def identify_normalization(
    statistics: dict[int, FeatureStatistics],
    config: NormalizationConfig,
    names: dict[int, str] | None = None,
    inputs: dict[str, Any] | None = None,
) -> NormalizationArtifact:
    """Identify every feature; `feature_ids` are the sorted ids. Overrides of absent features are config errors."""
    if not statistics:
        raise ValueError("no state features found: the timeline's state_features maps are all empty")
    unknown = sorted(set(config.overrides) - set(statistics))
    if unknown:
        raise ConfigError(f"normalization.overrides: feature ids {unknown} do not occur in the data "
                          f"(features: {sorted(statistics)[:20]})")
    feature_ids = sorted(int(f) for f in statistics)
    parameters = {
        fid: identify_parameters(fid, statistics[fid], config, config.overrides.get(fid)) for fid in feature_ids
    }
    names = {fid: names[fid] for fid in feature_ids if names and fid in names}
    return NormalizationArtifact(feature_ids, parameters, config.clip, names, dict(statistics), inputs or {})


# -------------------------------------------------------------------------------------------- Preprocessor
def _index(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def _floats(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _padded(rows: list[list[float]], fill: float) -> Tensor:
    width = max([len(r) for r in rows] + [2])
    out = torch.full((len(rows), width), fill, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = _floats(r)
    return out


class Preprocessor(torch.nn.Module):
    """Applies a NormalizationArtifact: (B, F) raw values and presence -> (B, D) normalized, D = output_dim.

    Features are processed in one vectorized step per type (index tensors); the output keeps the artifact's
    feature order, each ENUM feature expanded in place to its one-hot columns. Scriptable with torch.jit.script.
    """

    def __init__(self, artifact: NormalizationArtifact):
        super().__init__()
        params = [artifact.parameters[f] for f in artifact.feature_ids]
        groups: dict[str, list[int]] = {t: [i for i, p in enumerate(params) if p.feature_type == t]
                                        for t in FEATURE_TYPES}
        self.num_features = len(params)
        self.output_dim = artifact.output_dim
        self.clip = float(artifact.clip)
        self.prob_eps = PROBABILITY_EPS
        self.bc_margin = BOX_COX_MARGIN
        for t in FEATURE_TYPES:
            self.register_buffer(f"idx_{t.lower()}", _index(groups[t]))
        cont, boxcox = [params[i] for i in groups[CONTINUOUS]], [params[i] for i in groups[BOXCOX]]
        self.register_buffer("cont_mean", _floats([p.mean for p in cont]))
        self.register_buffer("cont_std", _floats([p.stddev for p in cont]))
        self.register_buffer("bc_shift", _floats([p.boxcox_shift or 0.0 for p in boxcox]))
        lambdas = [p.boxcox_lambda or 0.0 for p in boxcox]
        self.register_buffer("bc_lambda", _floats(lambdas))
        self.register_buffer("bc_is_log", torch.tensor([abs(v) < 1e-6 for v in lambdas], dtype=torch.bool))
        self.register_buffer("bc_mean", _floats([p.mean for p in boxcox]))
        self.register_buffer("bc_std", _floats([p.stddev for p in boxcox]))
        bounds = [params[i].quantiles or [] for i in groups[QUANTILE]]
        if any(len(b) < 2 for b in bounds):
            raise ValueError("QUANTILE features need at least 2 boundaries")
        self.register_buffer("q_bounds", _padded(bounds, math.inf))  # (Fq, Q), +inf past each feature's end
        self.register_buffer("q_last", _index([len(b) - 1 for b in bounds]))  # (Fq,) m: index of the last bound
        enum_values = [params[i].possible_values or [] for i in groups[ENUM]]
        self.register_buffer("enum_values", _padded(enum_values, math.nan))  # (Fe, V); nan never matches
        width = self.enum_values.shape[1]
        self.register_buffer("enum_keep", _index([j * width + k for j, v in enumerate(enum_values)
                                                  for k in range(len(v))]))
        # Output column c comes from column out_perm[c] of the type-ordered concatenation, feature out_source[c].
        order = [i for t in FEATURE_TYPES for i in groups[t]]
        start, concat_cols = 0, {}
        for i in order:
            concat_cols[i] = list(range(start, start + params[i].width))
            start += params[i].width
        self.register_buffer("out_perm", _index([c for i in range(len(params)) for c in concat_cols[i]]))
        self.register_buffer("out_source", _index([i for i in range(len(params)) for _ in range(params[i].width)]))

    def _quantile(self, x: Tensor) -> Tensor:  # (B, Fq) -> (B, Fq) in [0, 1]
        num_q = self.q_bounds.shape[1]
        k = (x.unsqueeze(2) >= self.q_bounds.unsqueeze(0)).sum(2) - 1  # (B, Fq) segment index
        k = torch.minimum(k.clamp(min=0), (self.q_last - 1).unsqueeze(0))
        base = (torch.arange(self.q_bounds.shape[0], device=x.device) * num_q).unsqueeze(0)  # (1, Fq)
        lo = torch.take(self.q_bounds, base + k)
        hi = torch.take(self.q_bounds, base + k + 1)
        frac = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (k.to(x.dtype) + frac) / self.q_last.to(x.dtype).unsqueeze(0)

    def _boxcox(self, x: Tensor) -> Tensor:  # (B, Fb) -> (B, Fb)
        y = (x + self.bc_shift).clamp(min=self.bc_margin)
        lam = torch.where(self.bc_is_log, torch.ones_like(self.bc_lambda), self.bc_lambda)
        b = torch.where(self.bc_is_log, torch.log(y), (torch.pow(y, lam) - 1.0) / lam)
        return ((b - self.bc_mean) / self.bc_std).clamp(-self.clip, self.clip)

    def _enum(self, x: Tensor) -> Tensor:  # (B, Fe) -> (B, sum of k)
        one_hot = (x.unsqueeze(2) == self.enum_values.unsqueeze(0)).to(x.dtype)  # (B, Fe, V)
        flat = one_hot.reshape(x.shape[0], self.enum_values.shape[0] * self.enum_values.shape[1])
        return flat.index_select(1, self.enum_keep)

    def forward(self, values: Tensor, presence: Tensor) -> Tensor:
        """values (B, F) float, presence (B, F) float/int/bool -> (B, D) float32; absent features give 0."""
        if values.dim() != 2 or values.shape[1] != self.num_features:
            raise ValueError(f"Preprocessor expects values of shape (B, {self.num_features}), "
                             f"got {list(values.shape)}")
        if presence.shape != values.shape:
            raise ValueError(f"presence shape {list(presence.shape)} != values shape {list(values.shape)}")
        x = values.to(torch.float32)
        prob = x.index_select(1, self.idx_probability).clamp(0.0, 1.0)
        # log(p) - log(1 - p) with both terms floored at eps: symmetric in float32, unlike clamping p near 1.
        logit = torch.log(prob.clamp(min=self.prob_eps)) - torch.log((1.0 - prob).clamp(min=self.prob_eps))
        cont = (x.index_select(1, self.idx_continuous) - self.cont_mean) / self.cont_std
        parts = [  # same order as FEATURE_TYPES
            x.index_select(1, self.idx_do_not_preprocess),
            (x.index_select(1, self.idx_binary) != 0).to(torch.float32),
            logit,
            cont.clamp(-self.clip, self.clip),
            self._boxcox(x.index_select(1, self.idx_boxcox)),
            self._quantile(x.index_select(1, self.idx_quantile)),
            self._enum(x.index_select(1, self.idx_enum)),
        ]
        out = torch.cat(parts, dim=1).index_select(1, self.out_perm)  # (B, D)
        present = presence.index_select(1, self.out_source) != 0  # (B, D)
        return torch.where(present, out, torch.zeros_like(out))
