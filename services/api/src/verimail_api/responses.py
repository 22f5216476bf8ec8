"""JSON answers without the standard library's encoder on the hot path."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from verimail_api.schemas import Answer


class JSONAnswer(JSONResponse):
    """An answer model serialised by its own (compiled) pydantic serializer, anything else by
    orjson: both several times faster than `json.dumps`, and the same bytes for every client."""

    def render(self, content: Any) -> bytes:
        if isinstance(content, Answer):
            return content.to_json()
        return orjson.dumps(content)
