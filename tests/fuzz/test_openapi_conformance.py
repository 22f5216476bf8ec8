"""Schemathesis against the running API, from the OpenAPI document it serves.

The cases come from the document the API serves (a test checks they are the same).
Several hundred generated cases per operation, derandomized so that CI sees the same cases
every run: no 5xx, and every status, content type, header and body conforms to the document.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.processes import Service
from verimail_api.openapi import DOCUMENT
from verimail_shared.embedded import free_port, wait_for_port

if TYPE_CHECKING:
    # The generated case's type: schemathesis names it for type checkers only.
    from schemathesis.specs.openapi.schemas import OpenApiCase

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
schema = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_url(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_PORT": str(port),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_CREATE_USER": "off",
        "RATE_LIMIT_VERIFY_EMAIL": "off",
        "RATE_LIMIT_RESEND_IP": "off",
        "RATE_LIMIT_RESEND_EMAIL": "off",
        "VERIFY_EMAIL_DEFER_SECONDS": "3600",
    }
    api = Service("verimail-api", env, Path(tmp_path_factory.mktemp("fuzz")) / "api.log")
    wait_for_port(port, 30)
    yield f"http://127.0.0.1:{port}"
    api.stop()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@schema.parametrize()
@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors_and_every_response_conforms(
    case: OpenApiCase, api_url: str, session: requests.Session
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if "/admin/" in case.path else None
    case.call_and_validate(base_url=api_url, session=session, headers=headers, checks=CHECKS)


def test_the_fuzzed_document_is_the_one_the_api_serves(
    api_url: str, session: requests.Session
) -> None:
    assert session.get(f"{api_url}/openapi.json", timeout=10).json() == DOCUMENT
