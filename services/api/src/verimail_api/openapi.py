"""The OpenAPI 3 document of the API, served at GET /openapi.json and used by the fuzz tests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from verimail_api.schemas import CreateUserRequest, ResendVerifyEmailRequest

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _json_or_page(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """JSON for API clients, an HTML page for browsers (decision 060)."""
    return {
        "description": description,
        "content": {JSON: {"schema": schema}, "text/html": {"schema": {"type": "string"}}},
    }


def _json_or_form(name: str) -> dict[str, Any]:
    """A request body in JSON, or an HTML form's fields (decision 060)."""
    return {
        "required": True,
        "content": {JSON: {"schema": _ref(name)}, FORM: {"schema": _ref(name)}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    descriptions = {
        400: "invalid arguments (every bad field listed in a google.rpc.BadRequest detail), "
        "malformed JSON, or a used or expired verification code",
        401: "admin route without the right bearer token",
        404: "not found (an unknown verification, or an admin route while ADMIN_TOKEN is unset)",
        409: "the username or the email is taken",
        413: "the body is larger than MAX_BODY_BYTES",
        415: "the body is declared as something other than JSON",
        429: "rate limited; see the Retry-After header",
        503: "PostgreSQL (or Redis) did not answer; try again",
    }
    result = {str(code): _json(_ref("Status"), descriptions[code]) for code in codes}
    if 429 in codes:
        result["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return result


def _request_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=False, ref_template=REF)
    schema.pop("title", None)
    return schema


TIMESTAMP = {"type": "string", "format": "date-time"}
SCHEMAS: dict[str, Any] = {
    "CreateUserRequest": _request_schema(CreateUserRequest),
    "ResendVerifyEmailRequest": _request_schema(ResendVerifyEmailRequest),
    "VerifyEmailRequest": {
        "type": "object",
        "required": ["email_id", "secret_code"],
        "properties": {
            "email_id": {"type": "integer", "format": "int64", "minimum": 1},
            "secret_code": {"type": "string", "minLength": 32, "maxLength": 128},
        },
    },
    "User": {
        "type": "object",
        "required": [
            "username",
            "full_name",
            "email",
            "is_email_verified",
            "password_changed_at",
            "created_at",
        ],
        "properties": {
            "username": {"type": "string"},
            "full_name": {"type": "string"},
            "email": {"type": "string"},
            "is_email_verified": {"type": "boolean"},
            "password_changed_at": TIMESTAMP,
            "created_at": TIMESTAMP,
        },
    },
    "CreateUserResponse": {
        "type": "object",
        "required": ["user"],
        "properties": {"user": _ref("User")},
    },
    "VerifyEmailResponse": {
        "type": "object",
        "required": ["is_verified"],
        "properties": {"is_verified": {"type": "boolean"}},
    },
    "Status": {
        "description": "google.rpc.Status, as grpc-gateway writes it",
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "integer", "description": "a google.rpc.Code"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
    },
    "DeadTask": {
        "type": "object",
        "required": [
            "id",
            "job_id",
            "task",
            "queue",
            "payload",
            "tries",
            "last_error",
            "failed_at",
            "requeued_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "job_id": {"type": "string"},
            "task": {"type": "string"},
            "queue": {"type": "string"},
            "payload": {"type": "object"},
            "tries": {"type": "integer"},
            "last_error": {"type": "string"},
            "failed_at": {**TIMESTAMP, "nullable": True},
            "requeued_at": {**TIMESTAMP, "nullable": True},
        },
    },
}
SCHEMAS.update(SCHEMAS["CreateUserRequest"].pop("$defs", {}))

ADMIN = {"security": [{"admin": []}], "tags": ["admin"]}
DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Verimail",
        "version": "0.1.0",
        "description": "Signup with asynchronous email verification. Request bodies accept the "
        "field names below and their camelCase forms; unknown fields are ignored.",
    },
    "paths": {
        "/v1/create_user": {
            "post": {
                "operationId": "create_user",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("CreateUserRequest")}},
                },
                "responses": {
                    "200": _json(_ref("CreateUserResponse"), "the user, created"),
                    **_errors(400, 409, 413, 415, 429, 503),
                },
            }
        },
        "/v1/verify_email": {
            "get": {
                "operationId": "verify_email",
                "parameters": [
                    {
                        "name": "email_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "integer", "format": "int64", "minimum": 1},
                    },
                    {
                        "name": "secret_code",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 32, "maxLength": 128},
                    },
                ],
                "description": "Uses the code. A browser (Accept: text/html first) gets instead "
                "a page whose button POSTs the code, and HEAD never uses it, so that a mail "
                "scanner fetching the link verifies nothing.",
                "responses": {
                    "200": _json_or_page(
                        _ref("VerifyEmailResponse"),
                        "verified (for a browser: the page with the button)",
                    ),
                    **_errors(400, 404, 429, 503),
                },
            },
            "post": {
                "operationId": "confirm_verify_email",
                "description": "Uses the code: what the button of the verification page sends "
                "(a form), or an API client (JSON). A browser gets an HTML page as the answer.",
                "requestBody": _json_or_form("VerifyEmailRequest"),
                "responses": {
                    "200": _json_or_page(
                        _ref("VerifyEmailResponse"),
                        "verified (an HTML page for browsers that ask for it)",
                    ),
                    **_errors(400, 404, 413, 415, 429, 503),
                },
            },
        },
        "/v1/resend_verify_email": {
            "post": {
                "operationId": "resend_verify_email",
                "description": "The same answer whether or not the address has an account. "
                "The expired-link page's form posts here too; a browser gets an HTML page.",
                "requestBody": _json_or_form("ResendVerifyEmailRequest"),
                "responses": {
                    "200": _json_or_page(
                        {"type": "object"}, "accepted (an HTML page for browsers that ask for it)"
                    ),
                    **_errors(400, 413, 415, 429, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "responses": {"200": _json({"type": "object"}, "the process runs")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {
                    "200": _json({"type": "object"}, "PostgreSQL and Redis answer"),
                    "503": _json({"type": "object"}, "a dependency does not answer"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format (404 when API_METRICS_PORT is set)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _json(_ref("Status"), "served on API_METRICS_PORT instead"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "this document")},
            }
        },
        "/v1/admin/dead_tasks": {
            "get": {
                **ADMIN,
                "operationId": "list_dead_tasks",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "include_requeued", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["dead_tasks"],
                            "properties": {
                                "dead_tasks": {"type": "array", "items": _ref("DeadTask")}
                            },
                        },
                        "dead letters, newest first",
                    ),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/admin/dead_tasks/{id}/retry": {
            "post": {
                **ADMIN,
                "operationId": "retry_dead_task",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["dead_task"],
                            "properties": {"dead_task": _ref("DeadTask")},
                        },
                        "re-queued",
                    ),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/admin/queues": {
            "get": {
                **ADMIN,
                "operationId": "queues",
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["queues"]},
                        "per queue: ready, deferred, in progress, dead",
                    ),
                    **_errors(401, 404, 503),
                },
            }
        },
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
