"""Signup bodies with names no other test uses."""

from __future__ import annotations

import uuid
from typing import Any


def new_user(**overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    body = {
        "username": f"user_{tag}",
        "full_name": "Alice Liddell",
        "email": f"alice.{tag}@example.com",
        "password": "correct horse battery",
    }
    body.update(overrides)
    return body
