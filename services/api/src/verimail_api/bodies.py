"""Reading a request body as JSON: size limit (413), content type (415), syntax (400).

grpc-gateway reads any body as JSON, and the README's `curl -d` sends JSON as
`application/x-www-form-urlencoded`; so a missing type, a JSON type, and the two types tools
send by default (form, text/plain) are read as JSON. Only a body under a clearly different type
is refused with 415 (docs/decisions/020).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response

from verimail_api.errors import error_response
from verimail_shared.errors import FieldViolation, InvalidArgument

# Types whose bodies may well be JSON: what curl -d, fetch() and grpc-gateway clients send.
LENIENT_TYPES = frozenset({"application/x-www-form-urlencoded", "text/plain"})


class BodyError(InvalidArgument):
    """An unusable body; `http_status` says which 4xx, the gRPC code stays INVALID_ARGUMENT."""

    http_status: ClassVar[int] = 400


class BodyTooLarge(BodyError):
    http_status = 413


class UnsupportedMediaType(BodyError):
    http_status = 415


def media_type(request: Request) -> str:
    """The declared type without parameters, lower case; "" when none was sent."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json_type(kind: str) -> bool:
    return kind in {"", "application/json"} or kind.endswith("+json")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, within `limit` bytes and under a type that can hold JSON."""
    kind = media_type(request)
    if not is_json_type(kind) and kind not in LENIENT_TYPES:
        raise _unsupported(kind)
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge([FieldViolation("body", f"must be at most {limit} bytes")])
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BodyTooLarge([FieldViolation("body", f"must be at most {limit} bytes")])
    try:
        return json.loads(chunks)
    except (ValueError, RecursionError):
        # A form or text body that is not JSON is a form or text, not broken JSON.
        if kind in LENIENT_TYPES:
            raise _unsupported(kind) from None
        raise InvalidArgument([FieldViolation("body", "must be valid JSON")]) from None


def _unsupported(kind: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        [FieldViolation("body", f"must be JSON (Content-Type: application/json), not {kind}")]
    )


def handle_body_error(request: Request, exc: Exception) -> Response:
    response = error_response(exc)
    if isinstance(exc, BodyError):
        response.status_code = exc.http_status
    return response
