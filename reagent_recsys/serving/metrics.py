"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bucket
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.buckets, value, side="left"))] += 1
        self.total += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        cumulative = np.cumsum(self.counts)
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, cumulative[:-1], strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {cumulative[-1]}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {self.total:.6f}", f"{name}_count{braces} {cumulative[-1]}"]
        return out


class Metrics:
    """Counters and histograms of one server process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.forward_seconds = 0.0
        self.decisions = 0
        self.reloads = 0
        self.reload_failures = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        hist = self.latency.get(endpoint)
        if hist is None:
            hist = self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def render(self, version: str, log_counts: dict[str, int], pending: int,
               sessions: dict[str, int] | None = None) -> str:
        def block(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
            return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]

        lines: list[str] = []
        lines += block("reagent_requests_total", "counter", "HTTP requests by endpoint and status code.",
                       [f'reagent_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                        for (e, c), n in sorted(self.requests.items())])
        samples: list[str] = []
        for endpoint, hist in sorted(self.latency.items()):
            samples += hist.lines("reagent_request_latency_seconds", f'endpoint="{endpoint}"')
        lines += block("reagent_request_latency_seconds", "histogram",
                       "Time in the request handler (body read to response built).", samples)
        lines += block("reagent_batch_size", "histogram", "Decisions per policy forward pass.",
                       self.batch_size.lines("reagent_batch_size", ""))
        lines += block("reagent_forward_seconds_total", "counter", "Time in the policy forward pass and exploration.",
                       [f"reagent_forward_seconds_total {self.forward_seconds:.6f}"])
        lines += block("reagent_decisions_total", "counter", "Decisions served.", [f"reagent_decisions_total "
                                                                                  f"{self.decisions}"])
        lines += block("reagent_decisions_logged_total", "counter", "Rows written to decision-log segments "
                       "(since the log was created).", [f"reagent_decisions_logged_total {log_counts['rows']}"])
        lines += block("reagent_feedback_joined_total", "counter", "Feedback joined to its decision (since the log "
                       "was created).", [f"reagent_feedback_joined_total {log_counts['feedback_joined']}"])
        lines += block("reagent_feedback_missing_total", "counter", "Decisions closed without feedback, by rule.", [
            f'reagent_feedback_missing_total{{rule="zero_reward"}} {log_counts["feedback_missing_zero_reward"]}',
            f'reagent_feedback_missing_total{{rule="drop"}} {log_counts["feedback_missing_dropped"]}'])
        lines += block("reagent_decisions_pending", "gauge", "Decisions awaiting feedback.",
                       [f"reagent_decisions_pending {pending}"])
        lines += block("reagent_policy_info", "gauge", "The policy version serving now.",
                       [f'reagent_policy_info{{version="{version}"}} 1'])
        lines += block("reagent_policy_reloads_total", "counter", "New policy versions loaded.",
                       [f"reagent_policy_reloads_total {self.reloads}"])
        lines += block("reagent_policy_reload_failures_total", "counter", "Exports that failed to load (the old "
                       "version kept serving).", [f"reagent_policy_reload_failures_total {self.reload_failures}"])
        if sessions:  # the per-session history state (exports with history features)
            lines += block("reagent_history_sessions", "gauge", "Sessions whose history the server keeps.",
                           [f"reagent_history_sessions {sessions['sessions']}"])
            lines += block("reagent_history_sessions_ended_total", "counter", "Sessions ended, by reason.", [
                f'reagent_history_sessions_ended_total{{reason="idle"}} {sessions["sessions_ended_idle"]}',
                f'reagent_history_sessions_ended_total{{reason="lru"}} {sessions["sessions_ended_lru"]}'])
            lines += block("reagent_history_refused_ended_total", "counter", "Decisions refused (409) because "
                           "their session had ended or predates the server.",
                           [f"reagent_history_refused_ended_total {sessions['refused_ended']}"])
            lines += block("reagent_history_served_before_feedback_total", "counter", "Decisions served while the "
                           "session's previous feedback was pending (their history saw that reward as 0; the "
                           "retrained table sees the real one).",
                           [f"reagent_history_served_before_feedback_total {sessions['served_before_feedback']}"])
        return "\n".join(lines) + "\n"
