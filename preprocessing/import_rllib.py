"""RLlib offline JSON (SampleBatch lines, as RLlib's JsonWriter writes them) -> decision-log rows (pure core).

One JSON object per line with the columns as lists (obs, actions, rewards, eps_id, t, action_prob/action_logp,
...). The rows are then imported like a decision log (preprocessing/import_logs.py): obs_<k> are the numeric
context features, eps_id the session, t the step, and the actions "0".."n-1" are possible at every step.
"""

from __future__ import annotations

from preprocessing.timeline import DataValidationError
from reagent_recsys.config import ImportConfig

RLLIB_REQUIRED = ("obs", "actions", "rewards", "eps_id")
PACKED_HINT = (
    "RLlib packed these columns (base64 of compressed pickles) and unpickling runs code from the file, so they "
    "are refused; write the logs unpacked: config.offline_data(output_compress_columns=[]) (old API stack: "
    "\"output_compress_columns\": []), or unpack them once in a trusted process"
)


def rllib_decisions(raw, packed_columns: list[str] | None = None):
    """RLlib SampleBatch lines (one JSON object per line, columns as lists) -> one row per step with columns
    eps_id, t, actions, rewards, propensity and obs (a numeric list). Raises DataValidationError with one line
    for packed columns, multi-agent batches, missing columns and non-discrete actions or non-flat observations."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in raw.schema.fields}
    if "policy_batches" in fields:
        raise DataValidationError("rule multi_agent_batch: column policy_batches: MultiAgentBatch lines are not "
                                  "supported; write one policy's SampleBatches")
    packed = [c for c in ("obs", "new_obs", "actions", "rewards") if isinstance(fields.get(c), T.StringType)]
    if packed:
        raise DataValidationError(f"rule packed_columns: columns {packed} are packed strings, not JSON lists: "
                                  f"{PACKED_HINT}")
    missing = [c for c in RLLIB_REQUIRED if c not in fields]
    if "action_prob" not in fields and "action_logp" not in fields:
        missing.append("action_prob or action_logp")
    if missing:
        raise DataValidationError(f"rule missing_column: RLlib columns {missing} are not in the input (found "
                                  f"{sorted(fields)[:20]}); the propensity comes from action_prob or action_logp")
    obs_type = fields["obs"]
    if not (isinstance(obs_type, T.ArrayType) and isinstance(obs_type.elementType, T.ArrayType)
            and isinstance(obs_type.elementType.elementType, T.NumericType)):
        raise DataValidationError(f"rule flat_observations: column obs: each observation must be a flat list of "
                                  f"numbers, got {obs_type.simpleString()}")
    action_type = fields["actions"]
    if not (isinstance(action_type, T.ArrayType) and isinstance(action_type.elementType, T.IntegralType)):
        raise DataValidationError(f"rule discrete_actions: column actions: only discrete (integer) actions can be "
                                  f"imported, got {action_type.simpleString()}")
    # Lines may log action_prob or action_logp (or both); a column absent from a line reads as null.
    size = F.size("actions")
    optional = {name: F.coalesce(F.col(name), F.array_repeat(F.lit(None).cast("double"), size))
                for name in ("action_prob", "action_logp") if name in fields}
    if "t" in fields:
        optional["t"] = F.col("t")
    zipped = F.arrays_zip(*[F.col(c).alias(c) for c in RLLIB_REQUIRED], *[v.alias(k) for k, v in optional.items()])
    rows = raw.select(F.explode(zipped).alias("_z")).select("_z.*")
    probs = [F.col(c) if c == "action_prob" else F.exp(F.col(c)) for c in ("action_prob", "action_logp")
             if c in optional]
    # Without `t`, steps are numbered by their order in the file within each episode.
    step = F.col("t") if "t" in fields else F.monotonically_increasing_id()
    return rows.select(
        F.col("eps_id").cast("string").alias("eps_id"),
        step.cast("long").alias("t"),
        F.col("actions").cast("string").alias("actions"),
        F.col("rewards").cast("double").alias("rewards"),
        F.coalesce(*probs).cast("double").alias("propensity"),
        F.col("obs").cast("array<double>").alias("obs"),
    )


def rllib_ragged_lines(raw):
    """The SampleBatch lines whose required columns are missing or of unequal lengths (they cannot be read)."""
    from pyspark.sql import functions as F

    size = F.size("actions")
    bad = F.lit(False)
    for column in RLLIB_REQUIRED:
        bad = bad | F.col(column).isNull() | (F.size(column) != size)
    return raw.where(bad)


def rllib_as_columns(rows, width: int):
    """RLlib step rows with obs expanded into columns obs_0..obs_{width-1} (nulls past a shorter obs)."""
    from pyspark.sql import functions as F

    return rows.select(
        "eps_id", "t", "actions", "rewards", "propensity",
        *[F.col("obs").getItem(k).alias(f"obs_{k}") for k in range(width)],
    )


def rllib_import_config(cfg: ImportConfig, width: int) -> ImportConfig:
    """The decision-log mapping of `rllib_as_columns` rows."""
    return cfg.model_copy(update={
        "session_column": "eps_id", "step_column": "t", "timestamp_column": None, "action_column": "actions",
        "propensity_column": "propensity", "reward_column": "rewards", "metric_columns": [],
        "position_column": None, "candidates_column": None, "numeric_features": [f"obs_{k}" for k in range(width)],
        "categorical_features": [], "items": None,
    })
