"""One YAML file drives a whole run: a section per stage, validated once at the CLI boundary.

Every field documents itself (``cli.py print-schema``). Unknown keys are rejected with their dotted path and a
suggestion; wrong types and out-of-range values name the field, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration problem; the message names the dotted field."""


class _Boolean:
    """Stands in for a boolean given to a field that takes no booleans, so that the field's own type check fails
    at the right dotted location (pydantic would otherwise read `epochs: true` as 1)."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _admits_bool(annotation: Any) -> bool:
    """True when `bool` appears anywhere in a field's annotation (Optional, Union, list, Annotated...)."""
    from typing import get_args

    return annotation is bool or any(_admits_bool(arg) for arg in get_args(annotation))


class StrictModel(BaseModel):
    """No unknown keys; a boolean is not a number (`epochs: true` is an error, not 1); numbers must be finite
    (no .inf or .nan). Text such as `1e-4` (YAML 1.1 reads it as a string) still parses as a number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None or _admits_bool(field.annotation):
                continue
            if isinstance(value, bool):
                fixed[name] = _Boolean(value)
            elif isinstance(value, list) and any(isinstance(v, bool) for v in value):
                fixed[name] = [_Boolean(v) if isinstance(v, bool) else v for v in value]
        return fixed


# --------------------------------------------------------------------------------------------- env
class EnvConfig(StrictModel):
    """The simulated users. `preset` fills every parameter left unset (null)."""

    type: Literal["lts", "recsim"] = Field(
        "lts", description="`lts`: our vectorized long-term-satisfaction model; `recsim`: google recsim via an adapter."
    )
    preset: Literal["recsim", "strong", "sweet_bitter"] = Field(
        "sweet_bitter", description="Parameter preset: recsim's defaults, the tutorial's StrongLTS, or sweet_bitter."
    )
    recsim_env: str = Field(
        "long_term_satisfaction",
        description="With type recsim: long_term_satisfaction, interest_evolution, interest_exploration, "
        "or a name registered with reagent_recsys.envs.recsim_adapter.register_recsim_env.",
    )
    recsim_plugins: list[str] = Field(
        default_factory=list,
        description="Modules imported before a recsim env is built, so they can register their own factories "
        "(dotted Python module names; importing runs their code: a config is trusted like code).",
    )
    memory_discount: float | None = Field(None, ge=0, lt=1, description="NPE memory discount (recsim: 0.7).")
    sensitivity: float | None = Field(None, gt=0, description="Satisfaction = sigmoid(sensitivity * NPE).")
    innovation_stddev: float | None = Field(None, ge=0, description="Stddev of the NPE innovation noise.")
    choc_mean: float | None = Field(None, description="Mean log-engagement of pure clickbait (chocolate).")
    choc_stddev: float | None = Field(None, ge=0, description="Stddev of log-engagement of pure clickbait.")
    kale_mean: float | None = Field(None, description="Mean log-engagement of pure healthy content (kale).")
    kale_stddev: float | None = Field(None, ge=0, description="Stddev of log-engagement of pure kale.")
    time_budget: int | None = Field(None, gt=0, description="Steps per episode.")
    num_candidates: int | None = Field(None, gt=0, description="Candidate documents offered each step.")
    slate_size: int | None = Field(None, gt=0, description="Documents in a slate; the user clicks the first.")
    initial_npe: float | Literal["random"] | None = Field(
        None,
        description="Starting NPE: a number fixes it; `random` draws recsim's (U(0,1) - 0.5) / (1 - memory_discount) "
        "per user; null takes the preset's (random for recsim and strong, 1.0 for sweet_bitter).",
    )
    document_sampler: Literal["uniform", "sweet_bitter"] | None = Field(
        None, description="uniform: clickbait ~ U(0,1); sweet_bitter: even slots U[0.8,1], odd slots U[0,0.2]."
    )
    resample_documents: bool | None = Field(
        None, description="Draw new candidates every step (true) or once per episode (false)."
    )
    observe_satisfaction: bool | None = Field(None, description="Satisfaction is a user feature (else latent).")
    observe_response: bool | None = Field(None, description="The last response (click, engagement) is observed.")
    observe_time: bool | None = Field(None, description="Observe the time feature t/T - 0.5.")

    @field_validator("recsim_plugins")
    @classmethod
    def _dotted_module_names(cls, names: list[str]) -> list[str]:
        import keyword

        for name in names:
            parts = name.split(".")
            if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
                raise ValueError(f"{name!r} is not a dotted Python module name (like my_pkg.my_envs)")
        return names

    @model_validator(mode="after")
    def _slate_fits(self) -> EnvConfig:
        if self.slate_size is not None and self.num_candidates is not None and self.slate_size > self.num_candidates:
            raise ValueError(
                f"slate_size ({self.slate_size}) must be <= num_candidates ({self.num_candidates})"
            )
        return self


# -------------------------------------------------------------------------------- logging policies
class RandomPolicyConfig(StrictModel):
    """Uniform over the candidates."""

    type: Literal["random"] = Field("random", description="Policy kind.")


class GreedyPolicyConfig(StrictModel):
    """Always the candidate with the largest (or smallest) document feature."""

    type: Literal["greedy"] = Field("greedy", description="Policy kind.")
    feature: str = Field(
        "clickbait", description="Document feature to rank by (checked against the env's document features)."
    )
    direction: Literal["max", "min"] = Field("max", description="max: sweetest; min: bitterest.")


class SoftmaxPolicyConfig(StrictModel):
    """Softmax over a document feature (times +1 for max, -1 for min) at a temperature."""

    type: Literal["softmax"] = Field("softmax", description="Policy kind.")
    feature: str = Field(
        "clickbait", description="Document feature used as the score (checked against the env's features)."
    )
    direction: Literal["max", "min"] = Field("max", description="Sign of the score.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature.")


class EpsilonGreedyPolicyConfig(StrictModel):
    """With probability epsilon a uniform candidate, else the expert's action."""

    type: Literal["epsilon_greedy"] = Field("epsilon_greedy", description="Policy kind.")
    epsilon: float = Field(0.1, ge=0, le=1, description="Exploration probability.")
    expert: GreedyPolicyConfig = Field(default_factory=GreedyPolicyConfig, description="The greedy expert.")


class ExplorationConfig(StrictModel):
    """How an exported policy picks among the possible actions (serving/exploration.py), wherever it is served:
    by workflow.serve or as offline_gym's logging policy."""

    exploration: Literal["greedy", "softmax", "epsilon_greedy"] = Field(
        "greedy", description="greedy: the policy's action (propensity 1); softmax: sample softmax(Q / temperature) "
        "over the possible actions; epsilon_greedy: a uniform possible action with probability epsilon, else the "
        "greedy one."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature (exploration: softmax).")
    epsilon: float = Field(0.1, ge=0, le=1, description="Exploration probability (exploration: epsilon_greedy).")


class ExportedPolicyConfig(ExplorationConfig):
    """An exported TorchScript policy (workflow.export's policy.pt) served greedy, softmax or epsilon-greedy."""

    type: Literal["exported"] = Field("exported", description="Policy kind.")
    path: str = Field(
        description="The exported policy: a policy.pt file or an export directory holding one (its metadata, "
        "embedded by workflow.export, gives the feature ids and action names; the simulator's state is mapped to "
        "them by id, absent features served as absent)."
    )


class MixtureComponent(StrictModel):
    weight: float = Field(gt=0, le=1, description="Probability that an episode uses this policy.")
    policy: PolicyConfig = Field(description="The policy for those episodes.")


class MixturePolicyConfig(StrictModel):
    """Per-episode mixture: each episode draws one component policy by weight."""

    type: Literal["mixture"] = Field("mixture", description="Policy kind.")
    components: list[MixtureComponent] = Field(min_length=1, description="Weighted component policies.")

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> MixturePolicyConfig:
        total = sum(c.weight for c in self.components)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"component weights must sum to 1, got {total:g}")
        return self


PolicyConfig = Annotated[
    Union[
        RandomPolicyConfig,
        GreedyPolicyConfig,
        SoftmaxPolicyConfig,
        EpsilonGreedyPolicyConfig,
        ExportedPolicyConfig,
        MixturePolicyConfig,
    ],
    Field(discriminator="type"),
]
MixtureComponent.model_rebuild()


class LoggingConfig(StrictModel):
    """Stage 1, workflow.offline_gym: simulate episodes with a logging policy and write the mdp table."""

    num_episodes: int = Field(1000, gt=0, description="Episodes to simulate.")
    batch_size: int = Field(4096, gt=0, description="Users simulated side by side (vectorized).")
    policy: PolicyConfig = Field(default_factory=RandomPolicyConfig, description="The logging policy.")
    ds: str = Field(
        "2026-01-01", pattern=r"^[0-9A-Za-z_.-]+$",
        description="Value of the `ds` partition column (letters, digits, '-', '_', '.'; it names a directory).",
    )


# -------------------------------------------------------------------------------------- import (logs runs)
class ItemTableConfig(StrictModel):
    """An item side table: item id -> numeric item features, which become per-candidate features of the state."""

    path: str = Field(description="The item table (any Hadoop-compatible path).")
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None, description="File format; null: the decision log's (csv, jsonl or parquet)."
    )
    id_column: str = Field("item_id", description="Column holding the item id (the action's name in the log).")
    features: list[str] = Field(
        min_length=1, description="Numeric item feature columns; in the state as `item[<id>].<column>` per candidate."
    )


class ImportConfig(StrictModel):
    """Stage 1 of a logs run, workflow.import_logs: your decision logs -> the mdp table (no simulator)."""

    format: Literal["csv", "jsonl", "parquet", "rllib"] = Field(
        description="csv (with a header), jsonl (one JSON object per line), parquet: one row per decision, "
        "columns named below; rllib: RLlib offline JSON (SampleBatch lines as its JsonWriter writes them, unpacked)."
    )
    path: str = Field(description="The log file or directory (any Hadoop-compatible path; globs allowed).")
    output_path: str | None = Field(None, description="Where the mdp table goes; null: output_dir/mdp.")
    session_column: str = Field("session_id", description="Session / episode id (becomes mdp_id).")
    step_column: str | None = Field(
        None, description="Integer order of the decision in its session (becomes sequence_number). At least one "
        "of step_column and timestamp_column; with only a timestamp, decisions are numbered 0, 1, ... by time."
    )
    timestamp_column: str | None = Field(
        None, description="Time of the decision; its UTC date becomes the `ds` partition (null: every row gets "
        "`import.ds`)."
    )
    timestamp_format: str | None = Field(
        None, description="Spark datetime pattern of timestamp_column (e.g. yyyy-MM-dd HH:mm:ss); null: ISO 8601 "
        "or a number of seconds since the epoch."
    )
    action_column: str = Field("action", description="The chosen item / action (any string id).")
    propensity_column: str = Field(
        "propensity", description="Probability the logging policy gave the chosen action; must be in (0, 1]."
    )
    reward_column: str = Field("reward", description="Reward observed after the decision (numeric).")
    metric_columns: list[str] = Field(
        default_factory=list, description="Extra numeric columns kept as `metrics` (diagnostics, not features)."
    )
    position_column: str | None = Field(
        None, description="Position / slot the item was shown in (numeric); kept as the context feature "
        "`context.<column>`."
    )
    candidates_column: str | None = Field(
        None, description="The items available at the decision (a list, or in CSV one string split by "
        "candidates_separator) -> possible_actions; null: every item seen (logged actions and the item table)."
    )
    candidates_separator: str = Field("|", min_length=1, description="Separator of candidates_column in CSV text.")
    numeric_features: list[str] = Field(
        default_factory=list, description="Numeric context columns, kept as they are (`context.<column>`)."
    )
    categorical_features: list[str] = Field(
        default_factory=list, description="Categorical context columns, encoded per categorical_encoding."
    )
    categorical_encoding: Literal["one_hot", "hash"] = Field(
        "one_hot", description="one_hot: one 0/1 feature per value seen (`context.<column>=<value>`, the "
        "vocabulary in _features.json); hash: xxhash64(column, value) mod hash_buckets, one feature per bucket."
    )
    hash_buckets: int = Field(1024, gt=0, le=1_000_000, description="Buckets per hashed categorical feature.")
    items: ItemTableConfig | None = Field(None, description="Optional item side table (per-candidate features).")
    rllib_num_actions: int | None = Field(
        None, gt=0, description="rllib: size of the discrete action space (actions \"0\"..\"n-1\" are possible at "
        "every step); null: 1 + the largest action logged."
    )
    ds: str = Field(
        "2026-01-01", pattern=r"^[0-9A-Za-z_.-]+$", description="The `ds` partition of every row when there is no "
        "timestamp_column (letters, digits, '-', '_', '.')."
    )
    on_invalid: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: stop on invalid rows (nothing written); quarantine: write them with a `reason` "
        "to <mdp>/_rejects and import the rest."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ImportConfig:
        if self.format != "rllib" and self.step_column is None and self.timestamp_column is None:
            raise ValueError("set step_column or timestamp_column: decisions need an order within their session")
        if self.format == "rllib" and self.items is not None:
            raise ValueError("items: an item table needs named actions; rllib logs have integer actions")
        return self


# -------------------------------------------------------------------------------------- preprocessing
class HistoryConfig(StrictModel):
    """Episode-history features the timeline adds to every state (reagent_recsys/history.py defines them):
    computed from each step's earlier steps only, the same way by the timeline, the evaluation and the server."""

    sums: list[str] = Field(
        default_factory=lambda: ["candidate.*", "reward"],
        description="Sources of decayed sums sum_{k<t} d^(t-1-k) x_k: reward, step, metric.<name>, "
        "state.<name>, candidate.<name> (the chosen candidate's feature), action.<value>; state.*, candidate.* "
        "and action.* expand from the logs' _features.json."
    )
    decays: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.95, 1.0], description="The decays d of every sum (1 = running sum)."
    )
    counts: list[str] = Field(
        default_factory=list, description="Sources whose events (x > 0) are counted over the earlier steps; "
        "step counts the steps so far."
    )
    since: list[str] = Field(
        default_factory=list, description="Sources of 'steps since the last event' (x > 0); t + 1 when none yet."
    )

    @model_validator(mode="after")
    def _sources_are_known(self) -> HistoryConfig:
        from reagent_recsys.history import HistorySpec

        HistorySpec(sums=tuple(self.sums), decays=tuple(self.decays), counts=tuple(self.counts),
                    since=tuple(self.since))  # HistorySpecError (a ValueError) names the bad source
        return self


class TimelineConfig(StrictModel):
    """Stage 2, workflow.timeline_operator: mdp table -> transitions and a train/eval split."""

    input_path: str | None = Field(
        None, description="Input mdp table (any Hadoop-compatible path); null reads output_dir/mdp."
    )
    output_path: str | None = Field(
        None, description="Output directory of the timeline (any Hadoop-compatible path); null: output_dir/timeline."
    )
    multi_steps: int = Field(1, ge=1, le=1000, description="n of the n-step transitions (1 = one-step).")
    gamma: float = Field(
        0.99, ge=0, le=1, description="Discount of the n-step rewards; follows training.gamma when unset (set both "
        "only to the same value: a mismatch is a config error)."
    )
    split: Literal["hash", "time"] = Field(
        "hash", description="hash: whole episodes by a stable hash of mdp_id (eval_fraction of them in eval); "
        "time: train on ds < eval_from, evaluate on ds >= eval_from (an episode that reaches eval_from is eval)."
    )
    eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="split hash: share of episodes (by mdp_id hash) in eval."
    )
    eval_from: str | None = Field(
        None, description="split time: the first `ds` of the eval split (ds values compare as strings, so use "
        "ISO dates)."
    )
    outlier_episode_length_percentile: float | None = Field(
        None, gt=0, le=1, description="Drop episodes longer than this percentile of episode length; null keeps all."
    )
    time_window: int | None = Field(
        None, gt=0, description="Keep only steps with time_since_first < time_window; null keeps all."
    )
    ds_start: str | None = Field(None, description="First `ds` partition read (inclusive); null: no bound.")
    ds_end: str | None = Field(None, description="Last `ds` partition read (inclusive); null: no bound.")
    on_invalid: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: stop on invalid rows; quarantine: write them to a rejects table and go on."
    )
    history: HistoryConfig | None = Field(
        None, description="Episode-history features added to state_features and next_state_features (user "
        "state for a policy whose user is partly hidden); null: none."
    )
    quarantine: Literal["drop_episode", "cut_episode"] = Field(
        "drop_episode", description="With on_invalid: quarantine, what happens to an episode with an invalid "
        "row (never spliced around it): drop_episode drops it whole; cut_episode keeps its steps before the "
        "first invalid one (the last multi_steps of them only as next states). Its other rows go to rejects "
        "as quarantined_episode; the manifest counts both."
    )

    @model_validator(mode="after")
    def _time_split_has_a_boundary(self) -> TimelineConfig:
        if self.split == "time" and self.eval_from is None:
            raise ValueError("split time needs eval_from (the first ds of the eval split)")
        return self

    @model_validator(mode="after")
    def _ds_range_ordered(self) -> TimelineConfig:
        if self.ds_start is not None and self.ds_end is not None and self.ds_start > self.ds_end:
            raise ValueError(f"ds_start ({self.ds_start!r}) must be <= ds_end ({self.ds_end!r})")
        return self


class NormalizationConfig(StrictModel):
    """Stage 3, workflow.identify_normalization: per-feature statistics -> a type and parameters."""

    max_unique_enum_values: int = Field(10, gt=1, description="At most this many distinct values -> ENUM.")
    quantile_size: int = Field(20, gt=1, description="Quantile boundaries kept for QUANTILE features.")
    quantile_relative_error: float = Field(0.001, gt=0, lt=1, description="approxQuantile relative error.")
    sample_size: int = Field(100_000, gt=0, description="Bounded sample size for Box-Cox fitting.")
    skip_box_cox: bool = Field(False, description="Never choose BOXCOX unless overridden.")
    quantile_k2_threshold: float = Field(
        1000.0, gt=0, description="Normality-test K2 of the sample above which a continuous feature -> QUANTILE."
    )
    clip: float = Field(
        11.513, gt=0, description="CONTINUOUS and BOXCOX outputs are clamped to [-clip, clip] (stddevs)."
    )
    overrides: dict[int, Literal[
        "BINARY", "PROBABILITY", "CONTINUOUS", "BOXCOX", "QUANTILE", "ENUM", "DO_NOT_PREPROCESS"
    ]] = Field(default_factory=dict, description="Feature id -> forced normalization type.")


class TrainingTableConfig(StrictModel):
    """Stage 3b, workflow.training_table: timeline + normalization.json -> the dense training table."""

    action_names: list[str] | None = Field(
        None, description="Action order of the action indices and masks; null: the sorted distinct actions of "
        "the timeline (numeric-aware: \"2\" before \"10\")."
    )
    num_files: int = Field(
        8, gt=0, description="Parquet files per split, rows sorted by (mdp_key, sequence_number): the same input "
        "gives the same files, and up to this many training processes each get their own row groups."
    )


# ------------------------------------------------------------------------------------------ training
class TrainingConfig(StrictModel):
    """Stage 4, workflow.train: DQN on the dense training table."""

    algorithm: Literal["dqn", "cql", "bcq"] = Field("dqn", description="Discrete DQN, CQL or BCQ.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount; 0 gives the offline contextual bandit.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    batch_size: int = Field(1024, gt=0, description="Transitions per update.")
    epochs: int = Field(10, gt=0, description="Passes over the training table.")
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [256, 128], description="MLP hidden layer sizes (the last one feeds the heads)."
    )
    dueling: bool = Field(True, description="Dueling value/advantage heads.")
    double_q: bool = Field(True, description="Double-Q targets.")
    tau: float = Field(0.01, gt=0, le=1, description="Soft target update rate.")
    loss: Literal["huber", "mse"] = Field("huber", description="TD loss.")
    value_scale: float = Field(
        1.0, gt=0, description="The Q-network outputs Q / value_scale and the TD loss (and CQL's term) is taken in "
        "those units: like rewards scaled by 1 / value_scale, but Q-values stay in reward units. Near the size of "
        "the returns, the network learns large returns much faster."
    )
    grad_clip_norm: float | None = Field(10.0, gt=0, description="Gradient norm clip; null disables.")
    cql_alpha: float = Field(1.0, ge=0, description="CQL regularizer weight (algorithm: cql).")
    bcq_threshold: float = Field(0.3, ge=0, le=1, description="BCQ action threshold (algorithm: bcq).")
    loader: Literal["arrow", "petastorm"] = Field(
        "arrow", description="Training table reader: arrow (pyarrow.dataset, ~3x faster here) or petastorm."
    )
    shuffle_buffer: int = Field(100_000, ge=0, description="Rows in the shuffle buffer (0: no row shuffle).")
    cache_rows: int = Field(
        2_000_000, ge=0, description="arrow loader: keep the decoded table in memory across epochs when it has at "
        "most this many rows (~350 bytes a row at 24 features, 20 actions); 0: decode every epoch."
    )
    time_diff_discount: bool = Field(
        False, description="Bootstrap discount gamma^time_diff (sequence-number gap) instead of gamma^n_steps."
    )
    max_steps: int | None = Field(None, gt=0, description="Stop after this many updates in total; null: epochs only.")
    resume: bool = Field(False, description="Continue from the last checkpoint under output_dir/training/checkpoints.")
    keep_checkpoints: int | None = Field(
        None, gt=0, description="Keep only the newest this many per-epoch checkpoints (null: all; "
        "workflow.evaluate draws its training curve from them)."
    )
    log_every: int = Field(20, gt=0, description="Write TensorBoard scalars every this many updates.")
    cpe_every_epoch: bool = Field(
        True, description="After each epoch, write cheap CPE of the greedy policy on training_table/eval to "
        "TensorBoard (cpe/...: one-step IPS, SNIPS (+ DM, DR when gamma is 0), sequential WPDIS, WDR)."
    )
    torch_threads: int | None = Field(
        None, gt=0, description="torch intra-op threads for training (null: torch's default; 1 on busy machines)."
    )
    num_processes: int = Field(
        1, gt=0, le=256, description="Data-parallel training processes: above 1, workflow.train (and so "
        "end_to_end) launches them itself with torchrun on this machine (gloo on CPU, nccl on GPUs); each reads "
        "its own row groups, so training_table.num_files should be at least this."
    )


class ExportConfig(StrictModel):
    """Stage 5, workflow.export: a TorchScript policy with the normalization baked in."""

    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the exported action probabilities.")
    greedy: bool = Field(True, description="Serve (and evaluate) the greedy policy; false: the softmax one.")


class CandidatePolicyConfig(StrictModel):
    """A policy to evaluate: a TorchScript file or a Parquet table of action probabilities."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="Name in the report (letters, digits, '_', '-', '.'; not 'logging')."
    )
    path: str | None = Field(
        None, description="A TorchScript file (.pt) with the exported interface (metadata.json beside it or embedded "
        "gives feature_ids, action_names, greedy), or a Parquet table (file or directory) of action probabilities "
        "keyed by (mdp_id, sequence_number) with one column per action name, covering every eval row (and every "
        "train row for FQE, DR, WDR, MAGIC). null: the exported policy, output_dir/export/policy.pt."
    )
    greedy: bool | None = Field(
        None, description="TorchScript only: evaluate its greedy action (true) or its softmax (false); null: its "
        "metadata's `greedy` (export.greedy), else greedy."
    )

    @property
    def kind(self) -> str:
        """torchscript (path ends in .pt/.pts/.ts, or the exported policy) or table."""
        return "torchscript" if self.path is None or self.path.endswith((".pt", ".pts", ".ts")) else "table"


class EvaluationConfig(StrictModel):
    """Stage 6, workflow.evaluate: counterfactual policy evaluation (and, with an `env`, simulator ground truth)."""

    ground_truth_episodes: int = Field(
        2000, gt=0, description="Simulated episodes for the true value (only with an `env`)."
    )
    gamma: float = Field(
        1.0, ge=0, le=1, description="Discount of the sequential estimates and of the simulated true returns "
        "(1.0: the undiscounted episode return, comparable with the simulator's ground truth)."
    )
    curve_episodes: int = Field(
        500, gt=0, description="Simulated episodes per training checkpoint for the return-vs-epoch curve."
    )
    simulation_batch_size: int = Field(
        4096, gt=0, description="Users simulated side by side in the ground-truth rollouts."
    )
    bootstrap_samples: int = Field(
        200, ge=20, description="Bootstrap resamples (of contexts, or of whole episodes) behind every interval."
    )
    confidence_level: float = Field(
        0.95, gt=0, lt=1, description="Coverage of the percentile bootstrap intervals (0.95: 2.5% to 97.5%)."
    )
    switch_tau: float = Field(
        10.0, ge=0, description="Switch-DR threshold on the importance weight: DR where weight <= tau, else DM."
    )
    magic_num_j_steps: int = Field(
        10, ge=2, description="MAGIC blends at most this many j-step returns (always incl. pure model and WDR)."
    )
    fqe_iterations: int = Field(
        30, gt=0, description="FQE iterations K: Q_k is regressed on r + gamma * E_pi Q_{k-1} (reach ~K steps)."
    )
    fqe_epochs: int = Field(2, gt=0, description="FQE passes over the transitions per iteration.")
    fqe_hidden_sizes: list[int] = Field(
        default_factory=lambda: [64, 64], description="Hidden layer sizes of the FQE and reward-model MLPs."
    )
    fqe_model: Literal["auto", "per_action", "per_candidate"] = Field(
        "auto", description="Shape of the FQE and reward-model networks: per_action (state -> one Q per action) "
        "or per_candidate (one network (context, candidate features) -> Q shared by all actions, as in a "
        "parametric DQN); auto: per_candidate when every action's candidate features are in the state."
    )
    fqe_learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of FQE and the reward model.")
    fqe_batch_size: int = Field(512, gt=0, description="Transitions per FQE gradient step.")
    fqe_matmul_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Number type of the hidden layers' matrix products while fitting FQE and the reward "
        "model (weights and optimizer stay float32): bfloat16 is ~2x faster where the CPU multiplies it natively "
        "(AVX512-BF16 or AMX); auto: bfloat16 on such CPUs, else float32."
    )
    reward_model_epochs: int = Field(20, gt=0, description="Passes over the data fitting the one-step reward model.")
    history_decays: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9, 0.95, 1.0],
        description="FQE and the reward model also see, per decay d, sum_{k<t} d^(t-1-k) x_k of the episode's "
        "earlier steps (x: context features and the chosen candidate's features; the timeline's own history "
        "features are not summed again): the history a latent user state depends on. [] = the table's state only."
    )
    model_bootstrap_fits: int = Field(
        5, ge=0, description="K refits of FQE and the reward model on bootstrap resamples of the train episodes; "
        "the spread of the model-based estimates over them widens their intervals (0: model held fixed)."
    )
    model_refit_fraction: float = Field(
        0.3, gt=0, le=1, description="Below 1: each refit is warm-started from the main fit and runs this fraction "
        "of fqe_iterations (FQE) and reward_model_epochs (reward model), at least one (cheap, but refits stay near "
        "the main fit and understate its error). 1: each refit is a full fit from scratch with its own seed (an "
        "independent ensemble member; K times the main fit's cost)."
    )
    policies: list[CandidatePolicyConfig] = Field(
        default_factory=lambda: [CandidatePolicyConfig(name="policy")],
        description="The policies to evaluate and rank against the logging policy; the first one headlines the "
        "summary. Default: the exported policy alone, named `policy`."
    )

    @model_validator(mode="after")
    def _policy_names_unique(self) -> EvaluationConfig:
        names = [p.name for p in self.policies]
        if not names:
            raise ValueError("policies: name at least one policy (e.g. [{name: policy}] for the exported one)")
        if "logging" in names or len(set(names)) != len(names):
            raise ValueError(f"policies: names must be unique and not 'logging', got {names}")
        return self


class SparkConfig(StrictModel):
    """How the Spark stages get their session."""

    master: str = Field("local[*]", description="Spark master URL (local[*], spark://host:7077, yarn, k8s://...).")
    app_name: str = Field("reagent_recsys", description="Spark application name.")
    shuffle_partitions: int = Field(8, gt=0, description="spark.sql.shuffle.partitions.")
    driver_memory: str = Field("2g", description="spark.driver.memory (local mode).")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark settings (a local driver's "
                                 "spark.driver.extraJavaOptions are added to the ones reagent_recsys sets).")


# ------------------------------------------------------------------------------------------- serving
class ServeFlushConfig(StrictModel):
    """When the decision log writes: complete rows go to a new Parquet segment when either limit is reached."""

    max_rows: int = Field(10_000, gt=0, description="Write a segment when this many complete rows wait (size roll).")
    max_seconds: float = Field(
        30.0, gt=0, description="Write a segment at least this often when complete rows wait (time roll)."
    )
    fsync_seconds: float = Field(
        1.0, ge=0, description="fsync the journal at most this long after a write (0: after every batch). The "
        "journal is written before each response, so a killed process (SIGKILL) loses no acknowledged event; "
        "this bounds what a machine crash (power loss) can lose."
    )
    journal_max_bytes: int = Field(
        64 << 20, gt=0, description="Start a new journal (carrying only the decisions still awaiting feedback) "
        "when the current one passes this size."
    )


class ServeSessionsConfig(StrictModel):
    """Per-session history state (used when the served export has history features, timeline.history): the
    server keeps each session's running history in memory, bounded by these limits."""

    max_sessions: int = Field(
        100_000, gt=0, description="Most sessions kept; past it the least recently used session ends (a later "
        "decision for an ended session is refused, 409 naming session_id: start a new session_id)."
    )
    idle_seconds: float = Field(
        3600.0, gt=0, description="A session without a decision for this long ends (its memory is freed; later "
        "decisions for it are refused, 409 naming session_id)."
    )


class ServeConfig(ExplorationConfig):
    """workflow.serve: an HTTP server for export/policy.pt that logs its decisions as an mdp table."""

    host: str = Field("127.0.0.1", description="Interface to bind (0.0.0.0: every interface).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port; see port_file).")
    port_file: str | None = Field(
        None, description="Write the bound port to this file once the server accepts requests (for port 0)."
    )
    export_dir: str | None = Field(None, description="The export to serve; null: output_dir/export.")
    log_dir: str | None = Field(
        None, description="The decision log (an mdp table workflow.timeline_operator reads as is); "
        "null: output_dir/decision_log."
    )
    feedback_timeout_seconds: float = Field(
        3600.0, gt=0, description="A decision without feedback this long after it was served is closed by "
        "on_missing_feedback."
    )
    on_missing_feedback: Literal["zero_reward", "drop"] = Field(
        "zero_reward", description="zero_reward: log the decision with reward 0 and metric feedback_missing = 1; "
        "drop: keep it out of the log. Either way it is counted in the log's _manifest.json. An export with "
        "history features needs zero_reward (a dropped row would shift the later steps' history in the table)."
    )
    allow_missing_features: bool = Field(
        False, description="Accept decisions that omit some features (served as absent, presence 0); false: 422."
    )
    reload_seconds: float = Field(
        1.0, ge=0, description="Check the export for a new policy this often (0: never; the swap of the export "
        "directory by workflow.export is picked up without dropping a request)."
    )
    max_batch: int = Field(
        512, gt=0, description="Most decisions per policy forward pass (concurrent requests are batched)."
    )
    torch_threads: int = Field(1, gt=0, description="torch intra-op threads of the server.")
    flush: ServeFlushConfig = Field(default_factory=ServeFlushConfig, description="Decision log flush policy.")
    sessions: ServeSessionsConfig = Field(
        default_factory=ServeSessionsConfig, description="Limits of the per-session history state (exports with "
        "history features only)."
    )


class IterateConfig(StrictModel):
    """workflow.iterate: rounds of serve -> log -> timeline ... export -> CPE -> promote, on the simulator."""

    rounds: int = Field(3, gt=0, description="Rounds K of the loop.")
    episodes_per_round: int = Field(
        20_000, gt=0, description="Simulated users served over HTTP per round; their decision log is the round's "
        "mdp table."
    )
    batch_size: int = Field(1024, gt=0, description="Simulated users stepped together (decisions per request).")
    epsilon: float = Field(
        0.1, ge=0, le=1, description="epsilon-greedy exploration around the incumbent once a policy was promoted "
        "(until then the loop serves the uniform random policy)."
    )
    estimator: Literal["DR", "WDR"] = Field(
        "DR", description="Sequential CPE estimator of the safe-improvement rule: the candidate is promoted only if "
        "its lower bound beats the incumbent's estimate."
    )

# ------------------------------------------------------------------------------------------ pipeline
class PipelineConfig(StrictModel):
    """A whole run: one output_dir under which every artifact of the run is written."""

    # `import` is a Python keyword: the field is `import_`, written and dumped as `import`.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    output_dir: Path = Field(
        description="Directory for every artifact of the run (relative to the working dir). The Spark stages "
        "also accept a Hadoop-compatible URI here (hdfs://, s3a://, ...)."
    )
    _output_uri: str = PrivateAttr("")

    @field_validator("output_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("must not be empty (an empty path would write into the current directory)")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _remember_output_uri(cls, data: Any, handler: Any) -> PipelineConfig:
        # pathlib folds "hdfs://nn/out" into "hdfs:/nn/out"; keep the text as written for the Spark stages.
        model = handler(data)
        raw = data.get("output_dir") if isinstance(data, dict) else None
        model._output_uri = str(raw) if isinstance(raw, str) else str(model.output_dir)
        return model

    def output_uri(self, *parts: str) -> str:
        """`output_dir` joined with `parts` as written (URIs intact): what the Spark stages read and write."""
        return "/".join([(self._output_uri or str(self.output_dir)).rstrip("/"), *parts])

    @property
    def paths(self) -> RunPaths:
        """Where every stage of this run reads and writes."""
        return RunPaths(self)
    seed: int = Field(0, ge=0, description="Master seed; same seed, same output.")
    env: EnvConfig | None = Field(
        None, description="The simulator. Absent (null): a logs run, with no simulator anywhere (the mdp table comes "
        "from your logs; evaluation is counterfactual only)."
    )
    logging: LoggingConfig | None = Field(
        None, description="workflow.offline_gym: the simulated logging policy (defaults filled in when `env` is set)."
    )
    import_: ImportConfig | None = Field(
        None, alias="import", description="workflow.import_logs: read your decision logs (or RLlib offline JSON) "
        "into the mdp table; a logs run (no `env`) needs it."
    )
    timeline: TimelineConfig = Field(default_factory=TimelineConfig, description="workflow.timeline_operator.")
    normalization: NormalizationConfig = Field(
        default_factory=NormalizationConfig, description="workflow.identify_normalization."
    )
    training_table: TrainingTableConfig = Field(
        default_factory=TrainingTableConfig, description="workflow.training_table."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="workflow.train.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="workflow.export.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="workflow.evaluate.")
    spark: SparkConfig = Field(default_factory=SparkConfig, description="Spark session settings.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="workflow.serve: the policy server.")
    iterate: IterateConfig = Field(default_factory=IterateConfig, description="workflow.iterate: the closed loop.")

    @model_validator(mode="after")
    def _one_gamma(self) -> PipelineConfig:
        # timeline.gamma makes the n-step rewards that training.gamma bootstraps after: one discount.
        if "gamma" not in self.timeline.model_fields_set:
            if self.timeline.gamma != self.training.gamma:
                self.timeline = self.timeline.model_copy(update={"gamma": self.training.gamma})
        elif self.timeline.gamma != self.training.gamma:
            raise ValueError(f"timeline.gamma ({self.timeline.gamma:g}) and training.gamma ({self.training.gamma:g}) "
                             "must agree: the n-step rewards and the bootstrap use one discount (set training.gamma "
                             "only; timeline.gamma follows it)")
        return self

    @model_validator(mode="after")
    def _logging_needs_env(self) -> PipelineConfig:
        if self.env is None and self.logging is not None:
            raise ValueError("logging: a simulated logging policy needs an `env` section (add `env: {}` for the "
                             "default simulator, or drop `logging` for a logs run)")
        if self.env is not None and self.logging is None:
            self.logging = LoggingConfig()
        if self.env is not None and self.import_ is not None:
            raise ValueError("import: a run either simulates (`env`) or imports logs (`import`), not both")
        return self

    @property
    def simulated(self) -> bool:
        """True when the run has a simulator (`env`); False for a logs run."""
        return self.env is not None

    def section_data(self, *sections: str,
                     exclude: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
        """The named sections (by field name or alias) and the seed as JSON-able data, keyed as named, less the
        fields `exclude` names per section (e.g. {"training": ["resume"]}: fields that shape no output)."""
        dumped = self.model_dump(mode="json")
        fields = type(self).model_fields
        payload = {name: dumped[(fields[name].alias or name) if name in fields else name]
                   for name in ("seed", *sections)}
        for section, names in (exclude or {}).items():
            if isinstance(payload.get(section), dict):
                payload[section] = {k: v for k, v in payload[section].items() if k not in names}
        return payload

    def section_hash(self, *sections: str, exclude: Mapping[str, Collection[str]] | None = None) -> str:
        """A stable hash of `section_data(*sections, exclude=exclude)`: stage outputs and the end_to_end ledger
        record it to detect staleness."""
        payload = self.section_data(*sections, exclude=exclude)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class RunPaths:
    """Every stage's inputs and outputs under `output_dir`, named once. Local paths for the Python stages; the
    Spark stages take `uri(...)` forms, which keep hdfs:// and s3a:// output dirs intact."""

    MDP, TIMELINE, NORMALIZATION, TRAINING_TABLE = "mdp", "timeline", "normalization.json", "training_table"
    TRAINING, EXPORT, EVALUATION = "training", "export", "evaluation"

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.root = Path(config.output_dir)

    def uri(self, *parts: str) -> str:
        return self.config.output_uri(*parts)

    @property
    def mdp_input(self) -> str:
        """The mdp table the timeline reads: `timeline.input_path`, else what offline_gym or import_logs wrote."""
        return self.config.timeline.input_path or self.uri(self.MDP)

    @property
    def timeline_output(self) -> str:
        return self.config.timeline.output_path or self.uri(self.TIMELINE)

    @property
    def features_description(self) -> Path:
        """The `_features.json` describing the tables' state features: the timeline's (it adds history features)
        when it has one, else the mdp table's (local paths; may not exist)."""
        from reagent_recsys.schema import FEATURES_FILE

        timeline = Path(self.timeline_output) / FEATURES_FILE
        return timeline if timeline.is_file() else Path(self.mdp_input) / FEATURES_FILE

    @property
    def import_output(self) -> str:
        """The mdp table workflow.import_logs writes: `import.output_path`, else output_dir/mdp."""
        return (self.config.import_.output_path if self.config.import_ else None) or self.uri(self.MDP)

    @property
    def serve_export(self) -> Path:
        """The export directory workflow.serve serves: `serve.export_dir`, else output_dir/export."""
        return Path(self.config.serve.export_dir) if self.config.serve.export_dir else self.export

    @property
    def decision_log(self) -> Path:
        """Where workflow.serve logs its decisions: `serve.log_dir`, else output_dir/decision_log."""
        return Path(self.config.serve.log_dir) if self.config.serve.log_dir else self.root / "decision_log"

    mdp = property(lambda self: self.root / self.MDP)
    normalization = property(lambda self: self.root / self.NORMALIZATION)
    training_table = property(lambda self: self.root / self.TRAINING_TABLE)
    training = property(lambda self: self.root / self.TRAINING)
    model = property(lambda self: self.root / self.TRAINING / "model.pt")
    checkpoints = property(lambda self: self.root / self.TRAINING / "checkpoints")
    tensorboard = property(lambda self: self.root / self.TRAINING / "tensorboard")
    export = property(lambda self: self.root / self.EXPORT)
    policy = property(lambda self: self.root / self.EXPORT / "policy.pt")
    evaluation = property(lambda self: self.root / self.EVALUATION)
    iterate = property(lambda self: self.root / "iterate")
    config_file = property(lambda self: self.root / "config.yaml")


def resolved_config(config: PipelineConfig) -> dict[str, Any]:
    """The config as JSON-able data with every value actually used: an env preset's parameters filled in."""
    data = config.model_dump(mode="json")
    if config.env is not None and config.env.type == "lts":
        from dataclasses import asdict

        from reagent_recsys.envs.lts import LTSParams

        params = asdict(LTSParams.from_config(config.env))
        if params["initial_npe"] is None:
            params["initial_npe"] = "random"
        data["env"].update({name: value for name, value in params.items() if name in data["env"]})
    return data


def write_resolved_config(config: PipelineConfig) -> Path | None:
    """Write `resolved_config` to OUTPUT_DIR/config.yaml (atomically); None for a remote (URI) output_dir."""
    if "://" in config.output_uri():
        return None
    path = config.paths.config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".config.yaml.tmp-{os.getpid()}")
    tmp.write_text("# The resolved config of the last run into this directory (every value used).\n"
                   + yaml.safe_dump(resolved_config(config), sort_keys=False))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ loading, errors
def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation can hold (through Optional, Union, list, dict, Annotated)."""
    from typing import get_args, get_origin

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[Any] = []
    for arg in get_args(annotation) if get_origin(annotation) is not None else []:
        found.extend(_unwrap(arg))
    return found


def _readable_path(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Dotted path for a pydantic error location, dropping union tags; plus the field names valid at the end."""
    models: list[type[BaseModel]] = [PipelineConfig]
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        candidates = [(m, name) for m in models for name, f in m.model_fields.items() if item in (name, f.alias)]
        if candidates:
            model, name = candidates[0]
            parts.append(model.model_fields[name].alias or name)
            models = _unwrap(model.model_fields[name].annotation)
            continue
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == item]
        if tagged:  # a discriminated-union tag that pydantic puts into the location
            models = tagged
            continue
        parts.append(str(item))
        models = []
    dotted = ".".join(parts).replace(".[", "[")
    return dotted, [f.alias or name for m in models for name, f in m.model_fields.items()]


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    return _readable_path(loc)[1]


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = err["loc"]
        path, _ = _readable_path(loc)
        if err["type"] == "extra_forbidden":
            parent_fields = _fields_at(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), parent_fields, n=1)
            suggestion = f"did you mean {hint[0]}?" if hint else f"allowed: {', '.join(parent_fields)}"
            lines.append(f"{path}: unknown key ({suggestion})")
            continue
        value = err.get("input")
        shown = "" if err["type"] == "missing" or not loc else f" (got {value!r})"
        message = err["msg"].removeprefix("Value error, ")
        if isinstance(value, _Boolean):
            message = "expected a number or text, got a boolean"
        elif err["type"] == "finite_number":
            message = "must be a finite number"
        lines.append(f"{path}: {message}{shown}" if path else message)
    return "\n".join(lines)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read YAML, apply `dotted.key=value` overrides (values parsed as YAML) and validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    origins: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote text values, "
                              f"e.g. --set '{key.strip()}=\"...\"'") from None
        _set_dotted(data, key.strip(), value)
        origins[key.strip()] = item
    return validate_config(data, source=str(path), origins=origins)


def _blame(line: str, origins: dict[str, str]) -> str:
    """Append `(from --set key=value)` to an error line whose field a --set wrote (or lies under)."""
    path = line.split(":", 1)[0]
    for key, item in origins.items():
        if path == key or path.startswith((f"{key}.", f"{key}[")) or key.startswith(f"{path}."):
            return f"{line} (from --set {item})"
    return line


def validate_config(data: dict[str, Any], source: str = "<config>",
                    origins: dict[str, str] | None = None) -> PipelineConfig:
    """Validate a config mapping; errors name the dotted field (and the --set that wrote it, via `origins`)."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_blame(line, origins or {}) for line in format_validation_error(exc).split("\n")]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def describe_schema(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    """One line per field, `dotted.name (type, default): description`; used by `cli.py print-schema`."""
    lines = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{field.alias or name}"
        nested = _unwrap(field.annotation)
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "" if field.is_required() else f" = {field.get_default(call_default_factory=True)!r}"
        optional = set(get_args(field.annotation)) == {nested[0], type(None)} if len(nested) == 1 else False
        if nested and len(nested) == 1 and (isinstance(field.annotation, type) or optional):
            lines.append(f"{dotted}: {field.description or ''}")
            lines.extend(describe_schema(nested[0], f"{dotted}."))
        elif nested and len(nested) > 1:
            lines.append(f"{dotted} (one of: {', '.join(m.model_fields['type'].default for m in nested)}): "
                         f"{field.description or ''}")
            for m in nested:
                lines.extend(describe_schema(m, f"{dotted}[{m.model_fields['type'].default}]."))
        else:
            lines.append(f"{dotted} ({annotation}{default}): {field.description or ''}")
    return lines
