"""The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.

Written by hand next to the routes it describes; tests/fuzz runs Schemathesis against a running
API with it, so a route, field or answer missing here fails CI.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from verimail_api import __doc__ as API_DOC

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def status(description: str, *, html: bool = False, retry_after: bool = False) -> Schema:
    """An error answer: google.rpc.Status JSON (or, for a browser, the HTML page)."""
    answer = json_body(ref("Status"), description)
    if html:
        answer["content"]["text/html"] = {"schema": {"type": "string"}}
    if retry_after:
        answer["headers"] = {
            "Retry-After": {
                "description": "seconds until the limit resets",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return answer


# Answers any route may give (the query cap, dependency outages, the rate limits).
QUERY_TOO_LONG = status("query string longer than 4096 bytes (code 3)")
UNAVAILABLE = status("PostgreSQL or Redis did not answer (code 14)")
BODY_ERRORS = {
    "400": status("invalid fields, malformed JSON, or a body that is not an object (code 3)"),
    "413": status("body larger than MAX_BODY_BYTES (code 3)"),
    "415": status("a body under a content type that is not JSON (code 3)"),
    "414": QUERY_TOO_LONG,
    "429": status("rate limited (code 8)", retry_after=True),
    "503": UNAVAILABLE,
}
ADMIN_ERRORS = {
    "401": status("missing or wrong bearer token (code 16)"),
    "404": status("ADMIN_TOKEN is unset, so the route does not exist; or no such task (code 5)"),
    "414": QUERY_TOO_LONG,
    "503": UNAVAILABLE,
}

SCHEMAS: dict[str, Schema] = {
    "Status": {
        "type": "object",
        "description": "google.rpc.Status, as grpc-gateway writes it",
        "required": ["code", "message", "details"],
        "properties": {
            "code": {"type": "integer", "description": "google.rpc.Code"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": ref("Any")},
        },
    },
    "Any": {
        "type": "object",
        "description": "google.protobuf.Any; for code 3, a google.rpc.BadRequest",
        "required": ["@type"],
        "properties": {
            "@type": {"type": "string"},
            "field_violations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "description"],
                    "properties": {
                        "field": {"type": "string"},
                        "description": {"type": "string"},
                    },
                },
            },
        },
    },
    "CreateUserRequest": {
        "type": "object",
        "description": "camelCase names (fullName) are accepted too; unknown fields are ignored",
        "required": ["username", "full_name", "email", "password"],
        "properties": {
            "username": {"type": "string", "pattern": "^[a-z0-9_]{3,100}$"},
            "full_name": {
                "type": "string",
                "minLength": 3,
                "maxLength": 100,
                "description": "letters (any script) and spaces",
            },
            "email": {"type": "string", "format": "email", "maxLength": 200},
            "password": {
                "type": "string",
                "minLength": 8,
                "maxLength": 64,
                "description": "not one of the 10,000 most common passwords",
            },
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
            "password_changed_at": {"type": "string", "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "CreateUserResponse": {
        "type": "object",
        "required": ["user"],
        "properties": {"user": ref("User")},
    },
    "ResendVerifyEmailRequest": {
        "type": "object",
        "required": ["email"],
        "properties": {"email": {"type": "string", "format": "email", "maxLength": 200}},
    },
    "VerifyEmailResponse": {
        "type": "object",
        "required": ["is_verified"],
        "properties": {"is_verified": {"type": "boolean"}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "DeadTask": {
        "type": "object",
        "required": ["id", "job_id", "task", "queue", "payload", "tries", "last_error"],
        "properties": {
            "id": {"type": "integer"},
            "job_id": {"type": "string"},
            "task": {"type": "string"},
            "queue": {"type": "string"},
            "payload": {"type": "object"},
            "tries": {"type": "integer"},
            "last_error": {"type": "string"},
            "failed_at": {"type": ["string", "null"], "format": "date-time"},
            "requeued_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Queues": {
        "type": "object",
        "required": ["queues"],
        "properties": {
            "queues": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "ready", "deferred", "in_progress", "dead"],
                    "properties": {
                        "name": {"type": "string"},
                        "ready": {"type": "integer"},
                        "deferred": {"type": "integer"},
                        "in_progress": {"type": "integer"},
                        "dead": {"type": "integer"},
                    },
                },
            }
        },
    },
}


def _query(name: str, schema: Schema, description: str, required: bool = True) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


PATHS: dict[str, Schema] = {
    "/v1/create_user": {
        "post": {
            "operationId": "create_user",
            "summary": "Sign up; the verification email follows from the worker",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": ref("CreateUserRequest")}},
            },
            "responses": {
                "200": json_body(ref("CreateUserResponse"), "the user, as stored"),
                **BODY_ERRORS,
                "409": status("username or email taken (code 6)"),
            },
        }
    },
    "/v1/verify_email": {
        "get": {
            "operationId": "verify_email",
            "summary": "Use a verification code (the link in the email)",
            "description": "emailId and secretCode work too. A browser (Accept: text/html) "
            "gets an HTML page instead of JSON.",
            "parameters": [
                _query("email_id", {"type": "integer", "minimum": 1}, "verification id"),
                _query(
                    "secret_code",
                    {"type": "string", "minLength": 32, "maxLength": 128},
                    "the code from the email",
                ),
            ],
            "responses": {
                "200": {
                    "description": "verified",
                    "content": {
                        JSON: {"schema": ref("VerifyEmailResponse")},
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                "400": status(
                    "invalid parameters (code 3), or a code used or expired (code 9)", html=True
                ),
                "404": status("unknown id or wrong code (code 5)", html=True),
                "414": QUERY_TOO_LONG,
                "429": status("rate limited (code 8)", html=True, retry_after=True),
                "503": UNAVAILABLE,
            },
        }
    },
    "/v1/resend_verify_email": {
        "post": {
            "operationId": "resend_verify_email",
            "summary": "Ask for a new verification email",
            "description": "The same answer whether or not the address has an account; an "
            "email goes out only to an unverified user.",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": ref("ResendVerifyEmailRequest")}},
            },
            "responses": {
                "200": json_body({"type": "object", "maxProperties": 0}, "always {}"),
                **BODY_ERRORS,
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "responses": {
                "200": json_body(ref("Health"), "the process runs"),
                "414": QUERY_TOO_LONG,
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: PostgreSQL and Redis answer",
            "responses": {
                "200": json_body(ref("Health"), "ready"),
                "414": QUERY_TOO_LONG,
                "503": json_body(ref("Health"), "a dependency does not answer"),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (absent here when API_METRICS_PORT is set)",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": status("served on API_METRICS_PORT instead (code 5)"),
                "414": QUERY_TOO_LONG,
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": json_body({"type": "object"}, "OpenAPI 3.1"),
                "414": QUERY_TOO_LONG,
            },
        }
    },
    "/v1/admin/dead_tasks": {
        "get": {
            "operationId": "list_dead_tasks",
            "summary": "Tasks that failed for good, newest first",
            "security": [{"adminToken": []}],
            "parameters": [
                _query(
                    "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most", False
                ),
                _query(
                    "include_requeued",
                    {"type": "string", "enum": ["true", "false"]},
                    "show re-queued ones too",
                    False,
                ),
            ],
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "required": ["dead_tasks"],
                        "properties": {"dead_tasks": {"type": "array", "items": ref("DeadTask")}},
                    },
                    "dead tasks",
                ),
                "400": status("invalid limit (code 3)"),
                **ADMIN_ERRORS,
            },
        }
    },
    "/v1/admin/dead_tasks/{id}/retry": {
        "post": {
            "operationId": "retry_dead_task",
            "summary": "Enqueue a dead task again under its job id",
            "security": [{"adminToken": []}],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
            ],
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "required": ["dead_task"],
                        "properties": {"dead_task": ref("DeadTask")},
                    },
                    "re-queued",
                ),
                "400": status("re-queued already, or queued or running (code 9)"),
                **ADMIN_ERRORS,
            },
        }
    },
    "/v1/admin/queues": {
        "get": {
            "operationId": "queues",
            "summary": "Ready, deferred, running and dead tasks per queue",
            "security": [{"adminToken": []}],
            "responses": {"200": json_body(ref("Queues"), "counts"), **ADMIN_ERRORS},
        }
    },
}


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Verimail API",
            "version": "1",
            "description": (API_DOC or "").strip(),
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN; the admin routes exist only when it is set",
                }
            },
        },
    }
