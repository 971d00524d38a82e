"""Spark-side storage helpers that work on any Hadoop-compatible path (local, file://, hdfs://, s3a://, ...).

Everything goes through the JVM's Hadoop FileSystem API of the session, never through Python's os module, so
the same code writes a local directory in tests and an HDFS/object-store prefix on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

from preprocessing.timeline import DataValidationError


def _jvm_path(spark, path: str):
    """(FileSystem, qualified Path) for `path`; a relative local path is made absolute on the driver."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(str(path))
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, fs.makeQualified(hpath)


def qualify(spark, path: str) -> str:
    """The fully qualified URI of `path` (e.g. file:/abs/out/timeline), as every executor must see it."""
    return _jvm_path(spark, path)[1].toString()


def exists(spark, path: str) -> bool:
    fs, hpath = _jvm_path(spark, path)
    return bool(fs.exists(hpath))


def delete(spark, path: str) -> None:
    fs, hpath = _jvm_path(spark, path)
    fs.delete(hpath, True)


def rename(spark, src: str, dst: str) -> None:
    """Rename src to dst; dst must not exist (Hadoop would move src *into* an existing directory)."""
    fs, hsrc = _jvm_path(spark, src)
    _, hdst = _jvm_path(spark, dst)
    if fs.exists(hdst):
        raise FileExistsError(f"cannot rename {src} to {dst}: the target exists")
    if not fs.rename(hsrc, hdst):
        raise OSError(f"rename {src} -> {dst} failed")


def list_names(spark, path: str) -> list[str]:
    fs, hpath = _jvm_path(spark, path)
    return sorted(status.getPath().getName() for status in fs.listStatus(hpath))


def write_text(spark, path: str, text: str) -> None:
    fs, hpath = _jvm_path(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark, path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    fs, hpath = _jvm_path(spark, path)
    if not fs.exists(hpath):
        return None
    jvm = spark.sparkContext._jvm
    stream = fs.open(hpath)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_json(spark, path: str, payload: Any) -> None:
    write_text(spark, path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def _owner() -> str:
    """`<pid>@<host>`: who writes a temporary (the sweep deletes those of dead processes of this host)."""
    return f"{os.getpid()}@{socket.gethostname().replace('-', '_')}"


def _abandoned(name: str, prefix: str) -> bool:
    """True for `<prefix><pid>@<host>-<id>` of a dead process on this host, or the old `<prefix><hex id>`."""
    rest = name.removeprefix(prefix)
    owner, _, _ = rest.partition("-")
    if "@" not in owner:
        return len(rest) == 12 and all(c in "0123456789abcdef" for c in rest)  # written before owners were named
    pid, _, host = owner.partition("@")
    if host != socket.gethostname().replace("-", "_") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_temporaries(spark, final: str) -> list[str]:
    """Clean up after killed writers of `final`: an abandoned `.name.old-*` (the previous output, renamed away
    just before the swap) comes back when `final` is missing, else it is deleted; abandoned `.name.tmp-*`
    (with Spark's `_temporary/` parts inside) are deleted. Returns what was deleted or restored."""
    fs, hfinal = _jvm_path(spark, final)
    parent, name = hfinal.getParent(), hfinal.getName()
    if not fs.exists(parent):
        return []
    touched = []
    children = sorted((status.getPath().getName(), status.getPath()) for status in fs.listStatus(parent))
    for prefix in (f".{name}.old-", f".{name}.tmp-"):
        for child, path in children:
            if not (child.startswith(prefix) and _abandoned(child, prefix)):
                continue
            if prefix.endswith("old-") and not fs.exists(hfinal):
                fs.rename(path, hfinal)
            else:
                fs.delete(path, True)
            touched.append(path.toString())
    return touched


@contextlib.contextmanager
def atomic_output(spark, final: str) -> Iterator[str]:
    """Yield a temporary sibling of `final` to write into; on success it replaces `final` by renames, on error it
    is deleted and `final` is left as it was. Temporaries of killed writers are swept first."""
    fs, hfinal = _jvm_path(spark, final)
    parent, name = hfinal.getParent(), hfinal.getName()
    if not fs.mkdirs(parent) and not fs.exists(parent):
        raise OSError(f"cannot create directory {parent.toString()} (read-only or no permission?)")
    sweep_temporaries(spark, final)
    tmp = f"{parent.toString()}/.{name}.tmp-{_owner()}-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(Exception):
            delete(spark, tmp)
        raise
    final_uri = hfinal.toString()
    if fs.exists(hfinal):
        trash = f"{parent.toString()}/.{name}.old-{_owner()}-{uuid.uuid4().hex[:12]}"
        rename(spark, final_uri, trash)
        rename(spark, tmp, final_uri)
        delete(spark, trash)
    else:
        rename(spark, tmp, final_uri)


def read_parquet_table(spark, path: str):
    """Read a Parquet table (partitioned or not) with a partition column `ds` kept as a string.

    Spark would infer `ds=2026-01-01` as a date and `ds=20260101` as an int; the table is re-read with `ds`
    declared as a string so the values stay exactly as written.
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import types as T

    if not exists(spark, path):
        raise DataValidationError(f"input table {path}: path does not exist")
    try:
        df = spark.read.parquet(path)
    except AnalysisException as exc:  # an empty directory has no schema to infer
        if "UNABLE_TO_INFER_SCHEMA" in str(exc):
            raise DataValidationError(f"rule empty_input: input table {path} has no Parquet files (0 rows)") from None
        raise
    partitioned_by_ds = any(name.startswith("ds=") for name in list_names(spark, path))
    if partitioned_by_ds and not isinstance(df.schema["ds"].dataType, T.StringType):
        fields = [
            T.StructField("ds", T.StringType(), True) if f.name == "ds" else f for f in df.schema.fields
        ]
        df = spark.read.schema(T.StructType(fields)).parquet(path)
    return df
