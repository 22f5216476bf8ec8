"""The job contract: task names, queues and payloads, defined once for both services."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskName(StrEnum):
    SEND_VERIFY_EMAIL = "send_verify_email"


class Queue(StrEnum):
    CRITICAL = "critical"
    DEFAULT = "default"


QUEUE_KEY_PREFIX = "arq:queue:"
# Enqueuers publish the queue's name here; idle workers wake at once (decision 008).
WAKEUP_CHANNEL = "verimail:wakeup"


def queue_key(queue: str) -> str:
    """The Redis sorted set that holds a queue's jobs (arq's layout, one key per queue)."""
    return QUEUE_KEY_PREFIX + queue


def queue_of_key(key: str) -> str:
    return key.removeprefix(QUEUE_KEY_PREFIX)


class TaskPayload(BaseModel):
    """What every task carries besides its own fields: how often to try, and whose request."""

    # Unknown fields are ignored: an older worker keeps working when the API adds one.
    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tries: int = Field(ge=1)
    request_id: str | None = None


class SendVerifyEmailPayload(TaskPayload):
    username: str = Field(min_length=1, max_length=100)


TASK_QUEUES: dict[TaskName, Queue] = {TaskName.SEND_VERIFY_EMAIL: Queue.CRITICAL}
TASK_PAYLOADS: dict[TaskName, type[TaskPayload]] = {
    TaskName.SEND_VERIFY_EMAIL: SendVerifyEmailPayload,
}


def serialize_job(data: dict[str, Any]) -> bytes:
    """JSON instead of arq's default pickle: nothing in Redis can run code when read."""
    return json.dumps(data, default=_describe, separators=(",", ":")).encode()


def deserialize_job(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    return data


def _describe(value: object) -> str:
    # Job results may hold exceptions; keep their type and message.
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return repr(value)
