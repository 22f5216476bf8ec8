"""The OpenAPI document describes every route the app serves, and the input rules it enforces."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from starlette.routing import Route

from verimail_api.app import create_app
from verimail_api.openapi import DOCUMENT, REF
from verimail_api.schemas import CreateUserRequest, User
from verimail_shared.settings import Settings


def served_operations(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    operations = set()
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path == "/admin" or route.path.startswith("/admin/"):
            continue  # the operator console's HTML pages are not part of the JSON API
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {id:int} is {id} in OpenAPI
        operations |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    return operations


def test_every_served_route_is_in_the_document_and_nothing_else() -> None:
    settings = Settings(_env_file=None, admin_token="a-long-enough-admin-token")
    documented = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert served_operations(settings) == documented


def test_request_schemas_carry_the_validation_rules() -> None:
    create = DOCUMENT["components"]["schemas"]["CreateUserRequest"]["properties"]
    assert {"minLength": 3, "maxLength": 100, "pattern": "^[a-z0-9_]+$"}.items() <= create[
        "username"
    ].items()
    assert create["password"]["minLength"] == 8 and create["password"]["maxLength"] == 64
    assert create["email"]["format"] == "email" and create["email"]["maxLength"] == 200
    assert create["full_name"]["minLength"] == 3 and create["full_name"]["maxLength"] == 100


def test_the_document_is_openapi_3_1_generated_from_the_models() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert DOCUMENT["openapi"] == "3.1.0"
    user = User.model_json_schema(mode="serialization", ref_template=REF)
    assert schemas["User"] == user
    assert schemas["CreateUserRequest"] == CreateUserRequest.model_json_schema(
        by_alias=False, ref_template=REF
    )


def test_the_user_answer_is_documented_with_exactly_the_models_fields() -> None:
    documented = DOCUMENT["components"]["schemas"]["User"]
    assert set(documented["properties"]) == set(User.model_fields) == set(documented["required"])
    answer = User(
        username="alice",
        full_name="Alice Liddell",
        email="alice@example.com",
        is_email_verified=False,
        password_changed_at=datetime(1, 1, 1, tzinfo=UTC),
        created_at=datetime(2026, 11, 22, 8, 5, 3, 120000, tzinfo=UTC),
    )
    assert set(json.loads(answer.to_json())) == set(User.model_fields)


def test_errors_are_google_rpc_status_with_bad_request_details() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["Status"]["required"] == ["code", "message", "details"]
    assert schemas["BadRequest"]["properties"]["@type"]["const"] == (
        "type.googleapis.com/google.rpc.BadRequest"
    )
    create = DOCUMENT["paths"]["/v1/create_user"]["post"]["responses"]
    assert {"400", "409", "414", "431"} <= set(create)
    assert create["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Status"
    }


def test_query_parameters_come_from_the_query_models() -> None:
    operation = DOCUMENT["paths"]["/v1/verify_email"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["email_id"]["required"] and parameters["email_id"]["schema"]["minimum"] == 1
    assert parameters["secret_code"]["schema"]["minLength"] == 32
    listing = DOCUMENT["paths"]["/v1/admin/dead_tasks"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert not limit["required"] and limit["schema"]["maximum"] == 1000
