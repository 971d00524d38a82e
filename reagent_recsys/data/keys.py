"""The training table's episode key without Spark: ``mdp_key = xxhash64(mdp_id)`` exactly as Spark computes it
(XXH64 of the UTF-8 bytes, seed 42, as a signed 64-bit integer), so tables keyed by ``mdp_id`` can be joined
with the training table in plain numpy."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_P1, _P2, _P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
_P4, _P5 = 9650029242287828579, 2870177450012600261
_M = (1 << 64) - 1
SPARK_SEED = 42


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def _merge(acc: int, value: int) -> int:
    return ((acc ^ _round(0, value)) * _P1 + _P4) & _M


def xxhash64(data: bytes, seed: int = SPARK_SEED) -> int:
    """XXH64 of `data` as a signed 64-bit integer (Spark's ``xxhash64`` of a string column)."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed & _M, (seed - _P1) & _M]
        while i + 32 <= n:
            v = [_round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little")) for k in range(4)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for lane in v:
            h = _merge(h, lane)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, int.from_bytes(data[i:i + 8], "little")), 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ ((int.from_bytes(data[i:i + 4], "little") * _P1) & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ ((data[i] * _P5) & _M), 11) * _P1) & _M
        i += 1
    h = ((h ^ (h >> 33)) * _P2) & _M
    h = ((h ^ (h >> 29)) * _P3) & _M
    h ^= h >> 32
    return h - (1 << 64) if h >= 1 << 63 else h


def mdp_keys(mdp_ids: Iterable[str]) -> np.ndarray:
    """(N,) int64 training-table keys of `mdp_ids`; each distinct id is hashed once."""
    ids = np.asarray(list(mdp_ids), dtype=object)
    unique, inverse = np.unique(ids.astype(str), return_inverse=True)
    keys = np.array([xxhash64(str(u).encode()) for u in unique], dtype=np.int64)
    return keys[inverse] if len(ids) else np.zeros(0, dtype=np.int64)
