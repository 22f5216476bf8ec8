"""The API's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "verimail_api_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "verimail_api_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TASKS_ENQUEUED = Counter(
    "verimail_api_tasks_enqueued_total",
    "Tasks put on a queue by the API.",
    ["task", "queue"],
)
