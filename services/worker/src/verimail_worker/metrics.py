"""The worker's Prometheus metrics. The names are a contract: dashboards and alerts use them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ["task", "queue"]

PROCESSED = Counter(
    "verimail_worker_tasks_processed_total", "Tasks completed successfully.", LABELS
)
RETRIED = Counter(
    "verimail_worker_tasks_retried_total",
    "Failed attempts that were scheduled to run again.",
    LABELS,
)
FAILED = Counter(
    "verimail_worker_tasks_failed_total",
    "Tasks that failed for good (permanent error or tries exhausted).",
    LABELS,
)
DURATION = Histogram(
    "verimail_worker_task_duration_seconds",
    "Time to run one attempt of a task.",
    LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LATENESS = Histogram(
    "verimail_worker_task_lateness_seconds",
    "How long after its due time an attempt started (deferred or retried tasks included).",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_PROGRESS = Gauge("verimail_worker_tasks_in_progress", "Tasks running now.", LABELS)
DEAD_TASKS = Gauge(
    "verimail_dead_tasks",
    "Dead letters waiting to be looked at (not re-queued), refreshed every 15 s.",
    LABELS,
)
OUTBOX_RELAYED = Counter(
    "verimail_outbox_relayed_total",
    "Outbox rows the relay enqueued because their writer had not (Redis down, a crash).",
)
OUTBOX_LOST = Counter(
    "verimail_outbox_lost_jobs_total",
    "Unfinished jobs Redis no longer had, found in the outbox and enqueued again.",
)
QUEUE_DEPTH = Gauge(
    "verimail_queue_depth",
    "Jobs waiting in a queue: `ready` are due now and not running, `deferred` due later.",
    ["queue", "state"],
)


def initialise(tasks: list[str], queues: list[str]) -> None:
    """Export every series at zero from the start, so rates and alerts see 0, not nothing."""
    for task in tasks:
        for queue in queues:
            for metric in (PROCESSED, RETRIED, FAILED, DURATION, LATENESS, IN_PROGRESS, DEAD_TASKS):
                metric.labels(task, queue)
