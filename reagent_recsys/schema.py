"""Every table of the pipeline, declared once.

Arrow schemas, Spark schemas and the column checks all derive from these declarations; errors name the column.
pyspark is imported lazily so that reading, training and serving never need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


class DataRuleError(ValueError):
    """Data breaks a rule: the one family of data errors (schema, timeline, training table, evaluation inputs).
    The message names the rule, the column, a count and examples; the CLI shows it as one line."""


class SchemaError(DataRuleError):
    """A table does not match its declared schema; the message names the column."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = False
    flag: bool = False  # 0/1 int8 values (or lists of them) that readers hand out as bool
    batch_dtype: str | None = None  # numpy dtype of training batches when narrower than the read dtype

    @property
    def is_list(self) -> bool:
        return pa.types.is_list(self.type)

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype a reader hands out (of the elements for list columns): flags become bool."""
        if self.flag:
            return np.dtype(bool)
        return np.dtype((self.type.value_type if self.is_list else self.type).to_pandas_dtype())


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def dtypes(self, batch: bool = False) -> dict[str, np.dtype]:
        """Column name -> numpy dtype of the arrays read from the table (`batch`: of training batches)."""
        return {c.name: np.dtype(c.batch_dtype) if batch and c.batch_dtype else c.dtype for c in self.columns}

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def arrow(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def spark(self):  # -> pyspark.sql.types.StructType
        from pyspark.sql import types as T

        return T.StructType([T.StructField(c.name, arrow_to_spark(c.type), c.nullable) for c in self.columns])

    def check_arrow(self, schema: pa.Schema, *, allow_extra: bool = True) -> None:
        """Raise SchemaError naming every missing column or column of the wrong type."""
        problems = []
        for c in self.columns:
            idx = schema.get_field_index(c.name)
            if idx < 0:
                problems.append(f"column {c.name!r}: missing (expected {c.type})")
            elif not _arrow_compatible(schema.field(idx).type, c.type):
                problems.append(f"column {c.name!r}: expected {c.type}, got {schema.field(idx).type}")
        if not allow_extra:
            extra = [n for n in schema.names if n not in self.names]
            if extra:
                problems.append(f"unexpected columns {extra}")
        if problems:
            raise SchemaError(f"{self.name} table: " + "; ".join(problems))

    def check_spark(self, schema, *, allow_extra: bool = True) -> None:
        """The same check for a Spark StructType (types compared after mapping ours to Spark's)."""
        problems = []
        fields = {f.name: f.dataType for f in schema.fields}
        for c in self.columns:
            expected = arrow_to_spark(c.type)
            if c.name not in fields:
                problems.append(f"column {c.name!r}: missing (expected {expected.simpleString()})")
            elif not _spark_compatible(fields[c.name], expected):
                problems.append(
                    f"column {c.name!r}: expected {expected.simpleString()}, got {fields[c.name].simpleString()}"
                )
        if not allow_extra:
            extra = [n for n in fields if n not in self.names]
            if extra:
                problems.append(f"unexpected columns {extra}")
        if problems:
            raise SchemaError(f"{self.name} table: " + "; ".join(problems))


def _arrow_compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    # Parquet round trips turn string into large_string in some writers and list into large_list.
    if pa.types.is_string(expected) and (pa.types.is_large_string(actual) or pa.types.is_string(actual)):
        return True
    if pa.types.is_list(expected) and (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
        return _arrow_compatible(actual.value_type, expected.value_type)
    if pa.types.is_map(expected) and pa.types.is_map(actual):
        return _arrow_compatible(actual.key_type, expected.key_type) and _arrow_compatible(
            actual.item_type, expected.item_type
        )
    return False


def _spark_compatible(actual, expected) -> bool:
    from pyspark.sql import types as T

    if isinstance(expected, T.ArrayType):
        return isinstance(actual, T.ArrayType) and _spark_compatible(actual.elementType, expected.elementType)
    if isinstance(expected, T.MapType):
        return (
            isinstance(actual, T.MapType)
            and _spark_compatible(actual.keyType, expected.keyType)
            and _spark_compatible(actual.valueType, expected.valueType)
        )
    return type(actual) is type(expected)


def arrow_to_spark(t: pa.DataType):
    from pyspark.sql import types as T

    scalar = {
        pa.string(): T.StringType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.int8(): T.ByteType(),
        pa.float32(): T.FloatType(),
        pa.float64(): T.DoubleType(),
        pa.bool_(): T.BooleanType(),
    }
    if t in scalar:
        return scalar[t]
    if pa.types.is_list(t):
        return T.ArrayType(arrow_to_spark(t.value_type), containsNull=False)
    if pa.types.is_map(t):
        return T.MapType(arrow_to_spark(t.key_type), arrow_to_spark(t.item_type), valueContainsNull=False)
    raise TypeError(f"no Spark type for arrow type {t}")


FEATURE_MAP = pa.map_(pa.int64(), pa.float32())
ACTION_LIST = pa.list_(pa.string())
METRICS_MAP = pa.map_(pa.string(), pa.float64())

# ------------------------------------------------------------------------------------ the mdp table
# What the logging stage writes and what production logs must look like: one row per logged decision.
MDP = TableSchema(
    "mdp",
    (
        Column("ds", pa.string(), "Date partition the row was logged in (Parquet partition column)."),
        Column("mdp_id", pa.string(), "Episode (user session) identifier."),
        Column("sequence_number", pa.int64(), "Order of the step within its episode (gaps allowed)."),
        Column("state_features", FEATURE_MAP, "Feature id -> value; ids are described beside the table."),
        Column("action", pa.string(), "The logged action (candidate slot index as a string)."),
        Column("action_probability", pa.float64(), "Probability the logging policy gave the logged action."),
        Column("reward", pa.float64(), "Reward observed after the action (engagement)."),
        Column("possible_actions", ACTION_LIST, "Actions the logging policy could choose from."),
        Column("metrics", METRICS_MAP, "Diagnostics: click, engagement, satisfaction."),
    ),
)

# Written beside each table directory (files starting with '_' are ignored by Spark and pyarrow readers).
MANIFEST_FILE = "_manifest.json"
FEATURES_FILE = "_features.json"

# ------------------------------------------------------------------------------- the timeline table
# What workflow.timeline_operator writes: one row per logged step, paired with the step n ahead.
# Written as <output_dir>/timeline/{train,eval}; the last step of an episode is kept with not_terminal = false,
# empty next_state_features / possible_next_actions and next_action = "".
TIMELINE = TableSchema(
    "timeline",
    (
        Column("mdp_id", pa.string(), "Episode identifier."),
        Column("sequence_number", pa.int64(), "Logged sequence number of this step."),
        Column("sequence_number_ordinal", pa.int64(), "1-based rank of the step within its episode."),
        Column("state_features", FEATURE_MAP, "State at this step."),
        Column("action", pa.string(), "Logged action."),
        Column("action_probability", pa.float64(), "Logging propensity of the action."),
        Column("reward", pa.float64(), "One-step reward of this step."),
        Column("possible_actions", ACTION_LIST, "Actions available at this step."),
        Column("metrics", METRICS_MAP, "Logged diagnostics of this step."),
        Column("next_state_features", FEATURE_MAP, "State n_steps ahead (empty when terminal)."),
        Column("next_action", pa.string(), "Logged action n_steps ahead (\"\" when terminal)."),
        Column("possible_next_actions", ACTION_LIST, "Actions available n_steps ahead (empty when terminal)."),
        Column("time_diff", pa.int64(), "sequence_number n_steps ahead minus this one (1 when terminal)."),
        Column("time_since_first", pa.int64(), "sequence_number minus the episode's first sequence_number."),
        Column("not_terminal", pa.bool_(), "False on the episode's last transition (no next state)."),
        Column("n_step_reward", pa.float64(), "sum_{k<n_steps} gamma^k reward_{t+k} (timeline.gamma)."),
        Column("n_steps", pa.int64(), "Steps actually taken (<= timeline.multi_steps; fewer at episode end)."),
    ),
)

# ------------------------------------------------------------------------------- the training table
# Dense and numeric only (petastorm cannot read maps, strings or nullable lists). Written as
# <output_dir>/training_table/{train,eval}; its _manifest.json holds `feature_ids` (the order of the
# state arrays, same as the normalization artifact) and `action_names` (the order of the action indices).
TRAINING = TableSchema(
    "training",
    (
        Column("mdp_key", pa.int64(), "Integer episode key (stable hash of mdp_id)."),
        Column("sequence_number", pa.int64(), "Logged sequence number (orders steps for sequential CPE)."),
        Column("state", pa.list_(pa.float32()), "(F,) raw feature values in feature_ids order; 0 when absent."),
        Column("state_presence", pa.list_(pa.int8()), "(F,) 1 where the feature was logged.", flag=True),
        Column("action", pa.int64(), "Index of the logged action in action_names."),
        Column("action_probability", pa.float64(), "Logging propensity of the action.", batch_dtype="float32"),
        Column("reward", pa.float64(), "One-step reward.", batch_dtype="float32"),
        Column("n_step_reward", pa.float64(), "Discounted n-step reward (equals reward when n = 1).",
               batch_dtype="float32"),
        Column("next_state", pa.list_(pa.float32()), "(F,) state n_steps ahead; zeros when terminal."),
        Column("next_state_presence", pa.list_(pa.int8()), "(F,) presence of next_state; zeros when terminal.",
               flag=True),
        Column("next_action", pa.int64(), "Index of the logged next action; 0 when terminal."),
        Column("possible_actions_mask", pa.list_(pa.int8()), "(A,) 1 for actions possible at this step.", flag=True),
        Column("possible_next_actions_mask", pa.list_(pa.int8()), "(A,) possible next actions; zeros when terminal.",
               flag=True),
        Column("not_terminal", pa.bool_(), "False on the episode's last transition."),
        Column("time_diff", pa.int64(), "Sequence-number gap to the next state."),
        Column("n_steps", pa.int64(), "Steps between state and next_state."),
    ),
)
