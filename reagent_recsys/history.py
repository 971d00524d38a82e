"""Episode-history features ("user state", sequence features): one definition, evaluated three ways.

A history feature of step t summarises the episode's EARLIER steps k < t (never step t itself, never the future):

    sum    h_t(d) = sum_{k<t} d^(t-1-k) x_k       a decayed sum (d = 1: the plain running sum); 0 at t = 0
    count  c_t    = #{k < t : x_k > 0}             how many earlier steps had the event
    since  s_t    = t - max{k < t : x_k > 0}       steps since the event last happened; t + 1 when it never did

where x_k is a step value named by a source:

    reward              the step's reward
    metric.<name>       a logged metric of the step (metrics map; 0 when absent)
    state.<name>        a state feature of the step (by its name in _features.json; 0 when absent)
    candidate.<name>    feature <name> of the candidate the step chose (the document feature of the action's slot)
    action.<value>      1 when the step's action is <value>, else 0
    step                1 for every step (count: steps so far)

Steps are counted by position in the episode (rows ranked by sequence_number): a gap in sequence numbers counts
as one step, as it does for a server that sees one decision after another.

Evaluated by `numpy_history` (arrays in memory: the evaluation models and the tests' reference),
`spark_history` (the timeline operator: window functions, no Python per row) and `SessionHistory` (the server:
one session's running state). All three fold sums oldest first with the same float64 recurrence
(acc = acc * d + x), so their float32 outputs are equal bit for bit. Spark's fold re-reads the episode's earlier
steps at every step (cost ~ L^2 / 2 per episode of length L: cheap for sessions of tens to hundreds of steps).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("sum", "count", "since")
HISTORY_KIND = "history"  # the `kind` of a history feature in _features.json
_SOURCE_KINDS = ("reward", "metric", "state", "candidate", "action", "step")


class HistorySpecError(ValueError):
    """A history source or feature cannot be built from what the logs describe; the message names the source."""


@dataclass(frozen=True)
class HistoryFeature:
    """One history feature: its kind, the source it summarises and (for sums) the decay."""

    kind: str  # "sum" | "count" | "since"
    source: str  # e.g. "reward", "candidate.clickbait", "metric.click"
    decay: float | None = None  # sums only

    @property
    def name(self) -> str:
        """The feature's name in _features.json and the export metadata, e.g. history.sum[0.8].reward."""
        return f"history.sum[{self.decay:g}].{self.source}" if self.kind == "sum" else f"history.{self.kind}.{self.source}"


@dataclass(frozen=True)
class HistorySpec:
    """Which history features to compute: decayed sums of `sums` at each of `decays`, event counts of `counts`
    and steps since the last event of `since` (sources as in the module docstring, wildcards already expanded)."""

    sums: tuple[str, ...] = ()
    decays: tuple[float, ...] = ()
    counts: tuple[str, ...] = ()
    since: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for source in (*self.sums, *self.counts, *self.since):
            kind = source.split(".", 1)[0]
            if kind not in _SOURCE_KINDS or (kind in ("reward", "step")) != (source == kind) or source.endswith("."):
                raise HistorySpecError(f"history source {source!r}: expected one of reward, step, metric.<name>, "
                                       "state.<name>, candidate.<name>, action.<value>")
        if any(not 0.0 <= d <= 1.0 for d in self.decays):
            raise HistorySpecError(f"history decays {list(self.decays)}: each must be in [0, 1]")

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source any feature reads, each once, in first-use order: the columns of a step-value matrix."""
        return tuple(dict.fromkeys((*self.sums, *self.counts, *self.since)))

    @property
    def features(self) -> tuple[HistoryFeature, ...]:
        """The features in output order: sums (per source, each decay), then counts, then since."""
        sums = [HistoryFeature("sum", s, d) for s in self.sums for d in self.decays]
        return (*sums, *(HistoryFeature("count", s) for s in self.counts),
                *(HistoryFeature("since", s) for s in self.since))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]


def spec_to_dict(spec: HistorySpec, ids: Sequence[int]) -> dict:
    """The spec and its feature ids as JSON (`_features.json`'s "history" block, the export metadata's)."""
    return {"sums": list(spec.sums), "decays": list(spec.decays), "counts": list(spec.counts),
            "since": list(spec.since), "ids": [int(i) for i in ids], "names": spec.names}


def spec_from_dict(block: Mapping) -> tuple[HistorySpec, list[int]]:
    """(spec, ids) back from `spec_to_dict`'s JSON."""
    spec = HistorySpec(sums=tuple(block.get("sums", ())), decays=tuple(float(d) for d in block.get("decays", ())),
                       counts=tuple(block.get("counts", ())), since=tuple(block.get("since", ())))
    ids = [int(i) for i in block.get("ids", [])]
    if len(ids) != len(spec.features):
        raise HistorySpecError(f"history block: {len(spec.features)} features but {len(ids)} ids")
    return spec, ids


def expand_sources(patterns: Iterable[str], description: Mapping | None, action_values: Sequence[str] = ()) -> tuple[
        str, ...]:
    """Sources with wildcards expanded from the logs' _features.json: `state.*` (every feature that is neither a
    candidate's nor a history feature: no sums of sums), `candidate.*` (every candidate feature name), `action.*`
    (every action value)."""
    features = [f for f in (description or {}).get("features", []) if f.get("kind") != HISTORY_KIND]
    candidates = [str(f["name"]).split(".", 1)[-1] for f in features if f.get("slot") is not None]
    state = [str(f["name"]) for f in features if f.get("slot") is None]
    wildcard = {"state.*": state, "candidate.*": candidates, "action.*": [str(a) for a in action_values]}
    out: list[str] = []
    for pattern in patterns:
        if pattern in wildcard:
            if not wildcard[pattern]:
                raise HistorySpecError(f"history source {pattern!r}: the logs describe no such features")
            out += [f"{pattern[:-2]}.{name}" for name in wildcard[pattern]]
        else:
            out.append(pattern)
    return tuple(dict.fromkeys(out))


def build_spec(config, description: Mapping | None, action_values: Sequence[str] = (),
               field: str = "timeline.history") -> HistorySpec:
    """The spec of a `timeline.history` config section (config.HistoryConfig), wildcards expanded and every
    state/candidate/action source checked against the logs' description; a HistorySpecError names
    `<field>.<sums|counts|since>` and the source."""
    expanded = {}
    for name in ("sums", "counts", "since"):
        try:
            sources = expand_sources(getattr(config, name), description, action_values)
            for source in sources:
                check_source(source, description, action_values)
        except HistorySpecError as exc:
            raise HistorySpecError(f"{field}.{name}: {exc}") from None
        expanded[name] = sources
    return HistorySpec(decays=tuple(config.decays), **expanded)


def check_source(source: str, description: Mapping | None, action_values: Sequence[str] = ()) -> None:
    """Raise HistorySpecError when the logs cannot provide `source` (a state or candidate feature they do not
    describe, an action value they never take). Metrics are an open map: any name is accepted."""
    kind, _, name = source.partition(".")
    if kind == "state":
        state_feature_id(description, name)
    elif kind == "candidate":
        candidate_feature_ids(description, name)
    elif kind == "action" and action_values and name not in {str(a) for a in action_values}:
        raise HistorySpecError(f"history source {source!r}: the logs have no action {name!r} (actions: "
                               f"{list(action_values)[:10]})")


def assign_ids(spec: HistorySpec, taken: Iterable[int]) -> list[int]:
    """Feature ids for spec.features: consecutive from the first multiple of 1000 above every taken id."""
    start = (max(taken, default=-1) // 1000 + 1) * 1000
    return list(range(start, start + len(spec.features)))


def logged_feature_ids(description: Mapping | None) -> list[int]:
    """The ids of the logs' own features (history features a server logged are not theirs: recomputed)."""
    return [int(f["id"]) for f in (description or {}).get("features", []) if f.get("kind") != HISTORY_KIND]


def describe(description: Mapping | None, spec: HistorySpec, ids: Sequence[int]) -> dict:
    """The `_features.json` of a table with history features: the logs' description (minus any history
    features a server logged), one entry per history feature and the "history" block (`spec_to_dict`)."""
    base = dict(description or {})
    features = [f for f in base.get("features", []) if f.get("kind") != HISTORY_KIND]
    features += [{"id": int(i), "name": name, "kind": HISTORY_KIND, "slot": None} for i, name in zip(
        ids, spec.names, strict=True)]
    return {**base, "features": features, "history": spec_to_dict(spec, ids)}


def candidate_feature_ids(description: Mapping | None, name: str) -> dict[str, int]:
    """{action value: state feature id of the candidate feature `name` in that action's slot}."""
    features = list((description or {}).get("features", []))
    by_slot = {int(f["slot"]): int(f["id"]) for f in features
               if f.get("slot") is not None and str(f["name"]).split(".", 1)[-1] == name}
    if not by_slot:
        raise HistorySpecError(f"history source 'candidate.{name}': the logs describe no candidate feature {name!r}")
    values = [str(v) for v in ((description or {}).get("action") or {}).get("values", [])]
    slot_of = {v: k for k, v in enumerate(values)} if values else {str(k): k for k in by_slot}
    return {action: by_slot[slot] for action, slot in slot_of.items() if slot in by_slot}


def state_feature_id(description: Mapping | None, name: str) -> int:
    """The state feature id of the logs' feature `name` (history features are not sources: no sums of sums)."""
    for f in (description or {}).get("features", []):
        if str(f["name"]) == name and f.get("kind") != HISTORY_KIND:
            return int(f["id"])
    raise HistorySpecError(f"history source 'state.{name}': the logs describe no feature named {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# numpy: whole tables in memory


def numpy_history(episode_key: np.ndarray, sequence_number: np.ndarray, step_values: np.ndarray,
                  spec: HistorySpec) -> np.ndarray:
    """(N, len(spec.features)) float32 history features of every row.

    `step_values` (N, len(spec.sources)) holds x of each row, columns in spec.sources order. Rows may come in any
    order; vectorized over episodes (one pass per step position), so cost ~ N * features + horizon.
    """
    key, seq = np.asarray(episode_key), np.asarray(sequence_number)
    x = np.asarray(step_values, dtype=np.float64)
    if key.ndim != 1 or seq.shape != key.shape or x.shape != (len(key), len(spec.sources)):
        raise ValueError(f"episode_key, sequence_number and step_values must be (N,), (N,) and (N, "
                         f"{len(spec.sources)}), got {key.shape}, {seq.shape} and {x.shape}")
    order = np.lexsort((seq, key))  # rows in episode order
    sorted_key = key[order]
    new_episode = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    position = np.arange(len(order)) - np.flatnonzero(new_episode)[np.cumsum(new_episode) - 1]  # (N,) 0-based
    by_position = np.split(np.argsort(position, kind="stable"), np.cumsum(np.bincount(position))[:-1])
    xs = x[order]
    column = {s: i for i, s in enumerate(spec.sources)}
    out = np.empty((len(key), len(spec.features)), dtype=np.float32)
    j = 0
    for source in spec.sums:
        for decay in spec.decays:
            h = np.zeros(len(xs))
            for rows in by_position[1:]:  # a step's predecessor is the row just before it
                h[rows] = h[rows - 1] * decay + xs[rows - 1, column[source]]
            out[order, j] = h
            j += 1
    for source in spec.counts:
        event = np.r_[0, (xs[:-1, column[source]] > 0)].astype(np.int64)  # event of the previous row
        total = np.cumsum(event)
        out[order, j] = total - total[np.flatnonzero(new_episode)[np.cumsum(new_episode) - 1]]
        j += 1
    for source in spec.since:
        last = np.full(len(xs), -1, dtype=np.int64)  # position of the last earlier event, -1: none
        for rows in by_position[1:]:
            last[rows] = np.where(xs[rows - 1, column[source]] > 0, position[rows] - 1, last[rows - 1])
        out[order, j] = np.where(last >= 0, position - last, position + 1)
        j += 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Spark: the timeline operator's tables


def spark_step_values(spec: HistorySpec, description: Mapping | None) -> list:
    """One double Column per spec.sources: x of each mdp row (state_features, action, reward, metrics)."""
    from pyspark.sql import functions as F

    columns = []
    for source in spec.sources:
        kind, _, name = source.partition(".")
        if kind == "reward":
            x = F.col("reward")
        elif kind == "step":
            x = F.lit(1.0)
        elif kind == "metric":
            x = F.try_element_at(F.col("metrics"), F.lit(name))
        elif kind == "state":
            x = F.try_element_at(F.col("state_features"), F.lit(state_feature_id(description, name)).cast("long"))
        elif kind == "candidate":
            ids = candidate_feature_ids(description, name)
            id_of_action = F.create_map(*[F.lit(v) for a, i in ids.items() for v in (a, i)])
            x = F.try_element_at(F.col("state_features"), F.try_element_at(id_of_action, F.col("action")).cast("long"))
        else:  # action
            x = (F.col("action") == F.lit(name)).cast("double")
        columns.append(F.coalesce(x.cast("double"), F.lit(0.0)).alias(f"_x{len(columns)}"))
    return columns


def spark_history(df, spec: HistorySpec, description: Mapping | None, ids: Sequence[int]):
    """`df` (mdp rows of whole episodes) with each row's history features added to its `state_features` map
    under `ids` (one per spec.features), replacing any values already logged under those ids (a server's
    decision log holds the features it served; the table recomputes them). Window functions over each episode
    ordered by sequence_number."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if len(ids) != len(spec.features):
        raise ValueError(f"{len(spec.features)} history features need as many ids, got {len(ids)}")
    ordered = Window.partitionBy("mdp_id").orderBy("sequence_number")
    earlier = ordered.rowsBetween(Window.unboundedPreceding, -1)
    xs = spark_step_values(spec, description)
    staged = df.select("*", *xs, (F.row_number().over(ordered) - 1).alias("_position"))
    x = {s: F.col(f"_x{i}") for i, s in enumerate(spec.sources)}
    values = []
    for source in spec.sums:
        past = F.collect_list(x[source]).over(earlier)  # oldest first
        values += [F.aggregate(past, F.lit(0.0), _horner(decay)) for decay in spec.decays]
    for source in spec.counts:
        values.append(F.coalesce(F.sum((x[source] > 0).cast("long")).over(earlier), F.lit(0)))
    for source in spec.since:
        last = F.max(F.when(x[source] > 0, F.col("_position"))).over(earlier)
        values.append(F.coalesce(F.col("_position") - last, F.col("_position") + 1))
    history = F.map_from_arrays(F.array(*[F.lit(int(i)).cast("long") for i in ids]),
                                F.array(*[v.cast("float") for v in values]))
    logged = F.map_filter("state_features", lambda k, _: ~k.isin([int(i) for i in ids]))
    return (staged.withColumn("state_features", F.map_concat(logged, history))
            .drop("_position", *(f"_x{i}" for i in range(len(xs)))))


def _horner(decay: float):
    from pyspark.sql import functions as F

    return lambda acc, x: acc * F.lit(float(decay)) + x


# ---------------------------------------------------------------------------------------------------------------
# The server: one session at a time


@functools.lru_cache(maxsize=16)
def _session_layout(spec: HistorySpec) -> tuple[dict[str, int], tuple[str, ...], tuple[np.ndarray, ...], np.ndarray]:
    """(source -> column, sources, index arrays of the sums', counts' and since's sources, decays) of a spec."""
    column = {s: i for i, s in enumerate(spec.sources)}
    picks = tuple(np.array([column[s] for s in sources], dtype=np.intp)
                  for sources in (spec.sums, spec.counts, spec.since))
    return column, spec.sources, picks, np.asarray(spec.decays, dtype=np.float64)


class SessionHistory:
    """One session's history, for the server: the features of its next step, updated as steps are served.

    `add_step` records a served step (its x per source; a source not yet known, such as the reward before the
    feedback arrives, is NaN) and `update_step` fills values in later. Steps are folded into the running state
    once complete; `next_features` folds what is still incomplete with its unknown values as 0, without
    committing, so the next decision never waits for feedback (it then sees the reward as 0, as a log row whose
    reward has not arrived would not).
    """

    def __init__(self, spec: HistorySpec) -> None:
        self.spec = spec
        self._column, self._sources, self._picks, self._decays = _session_layout(spec)  # shared by sessions
        self._state = self._initial()
        self._pending: list[np.ndarray] = []  # (S,) x of the steps after the folded ones, in order
        self._ahead: tuple | None = None  # (state, n): the first n pending steps folded with unknowns as 0

    def _initial(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        return (np.zeros((len(self.spec.sums), len(self._decays))), np.zeros(len(self.spec.counts), np.int64),
                np.full(len(self.spec.since), -1, np.int64), 0)  # sums, counts, last event position, position

    @property
    def steps(self) -> int:
        """How many steps this session has served."""
        return self._state[3] + len(self._pending)

    def _fold(self, state, x: np.ndarray):
        sums, counts, last, position = state
        pick_sums, pick_counts, pick_since = self._picks
        sums = sums * self._decays[None, :] + x[pick_sums][:, None]  # (S_sum, D): acc * d + x
        counts = counts + (x[pick_counts] > 0)
        last = np.where(x[pick_since] > 0, position, last)
        return sums, counts, last, position + 1

    def add_step(self, values: Mapping[str, float]) -> int:
        """Record the next served step's source values (missing or NaN: not known yet); returns its position."""
        self._pending.append(np.array([values.get(s, np.nan) for s in self._sources], dtype=np.float64))
        self._commit()
        return self.steps - 1

    def update_step(self, position: int, values: Mapping[str, float]) -> None:
        """Fill in values of step `position` that were not known when it was served (e.g. reward, metrics)."""
        index = position - self._state[3]
        if not 0 <= index < len(self._pending):
            raise IndexError(f"step {position} is not pending (served {self.steps}, folded {self._state[3]})")
        for source, value in values.items():
            if source in self._column:
                self._pending[index][self._column[source]] = value
        self._ahead = None
        self._commit()

    def _commit(self) -> None:
        while self._pending and not np.isnan(self._pending[0]).any():
            self._state = self._fold(self._state, self._pending.pop(0))
            self._ahead = None

    def next_features(self) -> np.ndarray:
        """(len(spec.features),) float32: the history features the session's next step sees."""
        state, done = self._ahead or (self._state, 0)  # steps awaiting feedback are folded once, not per call
        for x in self._pending[done:]:
            state = self._fold(state, np.nan_to_num(x, nan=0.0))
        self._ahead = (state, len(self._pending))
        sums, counts, last, position = state
        since = np.where(last >= 0, position - last, position + 1)
        return np.concatenate([sums.ravel(), counts, since]).astype(np.float32)
