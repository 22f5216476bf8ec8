"""The OpenAPI 3.1 document, generated from the models in schemas.py; served at
GET /openapi.json and used by the fuzz tests.

Only what a model cannot say is written here, once per route: its path and method, operation
id, which models it reads and answers, and which error statuses it can give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from verimail_api.responses import JSONAnswer
from verimail_api.schemas import (
    CreateUserRequest,
    CreateUserResponse,
    DeadTaskResponse,
    DeadTasksQuery,
    DeadTasksResponse,
    Health,
    QueuesResponse,
    Readiness,
    ResendVerifyEmailRequest,
    ResendVerifyEmailResponse,
    Status,
    VerifyEmailRequest,
    VerifyEmailResponse,
)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
PAGE = {"text/html": "string"}  # what a browser gets instead of JSON (decision 060)
REF = "#/components/schemas/{model}"

ERRORS = {
    400: "invalid arguments (every bad field listed in a google.rpc.BadRequest detail), "
    "malformed JSON, or a used or expired verification code",
    401: "admin route without the right bearer token",
    404: "not found (an unknown verification, or an admin route while ADMIN_TOKEN is unset)",
    409: "the username or the email is taken",
    413: "the body is larger than MAX_BODY_BYTES",
    414: "the URL is longer than the server reads (limits.py)",
    415: "the body is declared as something other than JSON",
    429: "rate limited; see the Retry-After header",
    431: "the request's headers are larger than the server reads (limits.py)",
    503: "PostgreSQL (or Redis) did not answer; try again",
}
# What any request can get, whatever its route: refused before it reaches one (limits.py).
EVERY_ROUTE = (414, 431)


@dataclass(frozen=True)
class Operation:
    """One route's metadata: all that the models do not say."""

    path: str
    method: Literal["get", "post"]
    operation_id: str
    answer: type[BaseModel] | None  # the 200 JSON body; None for a non-JSON answer
    ok: str  # what a 200 means
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    other_content: dict[str, str] = field(default_factory=dict)  # e.g. the HTML page's type
    other_answers: dict[int, tuple[type[BaseModel], str]] = field(default_factory=dict)
    form: bool = False  # the body may also be an HTML form's fields (decision 060)
    description: str | None = None
    admin: bool = False


OPERATIONS = [
    Operation(
        "/v1/create_user",
        "post",
        "create_user",
        CreateUserResponse,
        "the user, created",
        (400, 409, 413, 415, 429, 503),
        body=CreateUserRequest,
    ),
    Operation(
        "/v1/verify_email",
        "get",
        "verify_email",
        VerifyEmailResponse,
        "verified (for a browser: a page whose button POSTs the code)",
        (400, 404, 429, 503),
        query=VerifyEmailRequest,
        other_content=PAGE,
        description="Uses the code. A browser (Accept: text/html first) gets instead a page "
        "whose button POSTs the code, and HEAD never uses it, so that a mail scanner fetching "
        "the link verifies nothing.",
    ),
    Operation(
        "/v1/verify_email",
        "post",
        "confirm_verify_email",
        VerifyEmailResponse,
        "verified (an HTML page for browsers that ask for it)",
        (400, 404, 413, 415, 429, 503),
        body=VerifyEmailRequest,
        other_content=PAGE,
        form=True,
        description="Uses the code: what the verification page's button sends (a form), or an "
        "API client (JSON).",
    ),
    Operation(
        "/v1/resend_verify_email",
        "post",
        "resend_verify_email",
        ResendVerifyEmailResponse,
        "accepted (an HTML page for browsers that ask for it)",
        (400, 413, 415, 429, 503),
        body=ResendVerifyEmailRequest,
        other_content=PAGE,
        form=True,
        description="The same answer whether or not the address has an account. The "
        "expired-link page's form posts here too.",
    ),
    Operation("/healthz", "get", "healthz", Health, "the process runs"),
    Operation(
        "/readyz",
        "get",
        "readyz",
        Readiness,
        "PostgreSQL and Redis answer",
        other_answers={503: (Readiness, "a dependency does not answer")},
    ),
    Operation(
        "/metrics",
        "get",
        "metrics",
        None,
        "Prometheus text format (404 when API_METRICS_PORT is set)",
        other_content={"text/plain": "string"},
        other_answers={404: (Status, "served on API_METRICS_PORT instead")},
    ),
    Operation(
        "/openapi.json", "get", "openapi", None, "this document", other_content={JSON: "object"}
    ),
    Operation(
        "/v1/admin/dead_tasks",
        "get",
        "list_dead_tasks",
        DeadTasksResponse,
        "dead letters, newest first",
        (400, 401, 404, 503),
        query=DeadTasksQuery,
        admin=True,
    ),
    Operation(
        "/v1/admin/dead_tasks/{id}/retry",
        "post",
        "retry_dead_task",
        DeadTaskResponse,
        "re-queued",
        (400, 401, 404, 503),
        path_parameters={"id": {"type": "integer", "minimum": 0}},
        admin=True,
    ),
    Operation(
        "/v1/admin/queues",
        "get",
        "queues",
        QueuesResponse,
        "per queue: ready, deferred, in progress, dead",
        (401, 404, 503),
        admin=True,
    ),
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _components() -> dict[str, Any]:
    """Every model's JSON Schema (2020-12, which OpenAPI 3.1 uses as it is)."""
    inputs: list[type[BaseModel]] = []
    answers: list[type[BaseModel]] = [Status]
    for operation in OPERATIONS:
        inputs += [model for model in (operation.body, operation.query) if model]
        answers += [model for model in (operation.answer,) if model]
        answers += [model for model, _ in operation.other_answers.values()]
    # Inputs are documented by their proto names (their camelCase forms are in the description);
    # answers by the names they are written with (BadRequest's "@type").
    schemas: dict[str, Any] = {}
    sides: list[tuple[list[type[BaseModel]], JsonSchemaMode, bool]] = [
        (inputs, "validation", False),
        (answers, "serialization", True),
    ]
    for models, mode, by_alias in sides:
        pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
            (model, mode) for model in dict.fromkeys(models)
        ]
        _, found = models_json_schema(pairs, by_alias=by_alias, ref_template=REF)
        schemas |= found["$defs"]
    return schemas


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = schemas[model.__name__]
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": property_schema}
        for name, property_schema in schema["properties"].items()
    ]


def _errors(codes: tuple[int, ...]) -> dict[str, Any]:
    result = {str(code): _json(_ref(Status), ERRORS[code]) for code in (*codes, *EVERY_ROUTE)}
    if "429" in result:
        result["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return result


def _operation(operation: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": operation.ok, "content": {}}
    if operation.answer is not None:
        ok["content"][JSON] = {"schema": _ref(operation.answer)}
    for media_type, kind in operation.other_content.items():
        ok["content"][media_type] = {"schema": {"type": kind}}
    result: dict[str, Any] = {"operationId": operation.operation_id}
    if operation.description:
        result["description"] = operation.description
    if operation.admin:
        result |= {"security": [{"admin": []}], "tags": ["admin"]}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in operation.path_parameters.items()
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query, schemas)
    if parameters:
        result["parameters"] = parameters
    if operation.body is not None:
        types = (JSON, FORM) if operation.form else (JSON,)
        result["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": _ref(operation.body)} for media_type in types},
        }
    others = {
        str(status): _json(_ref(model), description)
        for status, (model, description) in operation.other_answers.items()
    }
    result["responses"] = {"200": ok, **others, **_errors(operation.errors)}
    return result


def document() -> dict[str, Any]:
    schemas = _components()
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Verimail",
            "version": "0.1.0",
            "description": "Signup with asynchronous email verification. Request bodies accept "
            "the field names below and their camelCase forms; unknown fields are ignored.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        },
    }


DOCUMENT = document()


async def openapi(request: Request) -> Response:
    return JSONAnswer(DOCUMENT)
