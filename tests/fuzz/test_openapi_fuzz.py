"""Schemathesis against the real `verimail-api` process, driven by its own OpenAPI document.

Every operation gets FUZZ_EXAMPLES schema-valid cases and as many schema-violating ones,
derandomized so that CI repeats the same run. Every answer must be a non-5xx that the document
describes: status code, content type, headers and body schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.processes import Service
from verimail_api.openapi import document
from verimail_shared.embedded import free_port, wait_for_port

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def has_inputs(operation: Any) -> bool:
    """Only an operation with parameters or a body can be sent input that breaks its schema."""
    spec = document()["paths"][operation.path][operation.method.lower()]
    return bool(spec.get("parameters") or spec.get("requestBody"))


CASES = [
    pytest.param(operation, mode, id=f"{operation.label} {mode.value}")
    for operation in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or has_inputs(operation)
]


@pytest.fixture(scope="module")
def api(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API as deployed: its own command, rate limits off so every case reaches the code."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_PORT": str(port),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_CREATE_USER": "off",
        "RATE_LIMIT_VERIFY_EMAIL": "off",
        "RATE_LIMIT_RESEND_IP": "off",
        "RATE_LIMIT_RESEND_EMAIL": "off",
    }
    log: Path = tmp_path_factory.mktemp("fuzz") / "api.log"
    service = Service("verimail-api", env, log)
    wait_for_port(port, 30)
    yield f"http://127.0.0.1:{port}"
    service.stop()
    # The server logs every 5xx with a traceback; there must be none.
    assert not service.events("unhandled_error"), log.read_text()[-4000:]


def test_the_served_document_is_the_one_fuzzed(api: str) -> None:
    served = httpx.get(f"{api}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == document()
    assert {op.path for op in OPERATIONS} == set(document()["paths"])


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_every_answer_is_documented_and_none_is_a_server_error(
    api: str, operation: Any, mode: GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @hypothesis_settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        case.call_and_validate(base_url=api, headers=headers, checks=CHECKS, timeout=30)

    run()
