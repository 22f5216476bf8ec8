"""The OpenAPI document describes every route the app serves, and the input rules it enforces."""

from __future__ import annotations

import re

from starlette.routing import Route

from verimail_api.app import create_app
from verimail_api.openapi import DOCUMENT
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
    settings = Settings(_env_file=None, admin_token="a-long-enough-admin-token")  # type: ignore[call-arg]
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
