"""Spark and Py4J failures as one line: the root cause's message and the path it concerns.

A failed write prints ~400 lines of JVM trace in which the reason ("No space left on device", "Permission
denied") appears only in a `Caused by:` line. `describe_spark_error` walks the Java cause chain instead.
"""

from __future__ import annotations

import re

# A URI with a scheme (file:/..., hdfs://..., s3a://...) or an absolute local path of two or more parts.
_PATH = re.compile(r"\b(?:file|hdfs|s3a?|gs|abfss?|wasbs?|viewfs|maprfs):/+[^\s'\"`,;()\[\]]+"
                   r"|(?<![\w:/.])/(?:[\w.@+=-]+/)+[\w.@+=-]*")
_NOISE = re.compile(r"\s+")
# Our atomic writers' temporaries (`.name.tmp-<owner>-<id>/...`, with Spark's `_temporary/attempt_...` below):
# the user knows the path of the output, not of its temporary.
_TEMPORARY = re.compile(r"/\.([\w.=-]+?)\.tmp-[^/\s]*(?:/[^\s'\"`,;()\[\]]*)?")


class SparkJobError(RuntimeError):
    """A Spark job failed. The message is one line (stage, root cause, path); the Java trace is its __cause__."""


def _java_chain(throwable) -> list[tuple[str, str]]:
    """(class name, message) of a Java throwable and its causes, outermost first (at most 20)."""
    chain: list[tuple[str, str]] = []
    seen = 0
    while throwable is not None and seen < 20:
        seen += 1
        try:
            name = str(throwable.getClass().getName())
            message = throwable.getMessage()
            chain.append((name, "" if message is None else str(message)))
            throwable = throwable.getCause()
        except Exception:  # noqa: BLE001 - the JVM is gone: keep what we have
            break
    return chain


def _chain_of(exc: BaseException) -> list[tuple[str, str]] | None:
    """The Java cause chain behind a Py4J or captured pyspark exception; None for other exceptions."""
    try:
        from py4j.protocol import Py4JError, Py4JJavaError
    except ImportError:  # pragma: no cover - pyspark not installed
        return None
    if isinstance(exc, Py4JJavaError):
        return _java_chain(exc.java_exception)
    origin = getattr(exc, "_origin", None)
    if origin is not None and type(exc).__module__.startswith("pyspark.errors"):
        return _java_chain(origin) or [(type(exc).__name__, str(exc))]
    if type(exc).__module__.startswith("pyspark.errors") and hasattr(exc, "getErrorClass"):
        return [(type(exc).__name__, str(exc))]
    if isinstance(exc, Py4JError):
        return [("Py4JError", "the Spark JVM is unreachable (it died or was killed?): " + str(exc).split("\n")[0])]
    return None


def _first_line(message: str) -> str:
    return _TEMPORARY.sub(r"/\1", _NOISE.sub(" ", message.strip().split("\n")[0]).strip())


def describe_spark_error(exc: BaseException) -> str | None:
    """One line for a Spark/Py4J failure, `<root cause message> (path: <path>)`; None when `exc` is not one.

    The root cause is the innermost Java exception with a message; the path is the first file path or URI named
    anywhere in the chain (outermost first: the outer messages name the file being written).
    """
    chain = _chain_of(exc)
    if chain is None:
        return None
    with_message = [(name, _first_line(message)) for name, message in chain if message and message.strip()]
    if not with_message:
        return f"{chain[-1][0]} (no message)" if chain else None
    name, message = with_message[-1]
    short = name.rsplit(".", 1)[-1]
    # Spark's error-class messages start with "[CLASS_NAME] ...": keep it; Java's own ones get the class name.
    root = message if message.startswith("[") else f"{short}: {message}"
    path = next((m.group(0).rstrip(".") for _, msg in chain if msg for m in [_PATH.search(_first_line(msg))] if m),
                None)
    if path and path not in root:
        root += f" (path: {path})"
    return root if len(root) <= 600 else root[:597] + "..."
