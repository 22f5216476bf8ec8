"""How `verimail-api` runs under uvicorn: uvloop, httptools, and a parser that leaves every
answer about a request's size to the app (limits.py)."""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from verimail_api.errors import INVALID_ARGUMENT
from verimail_api.limits import MAX_HEADER_BYTES, MAX_URL_BYTES
from verimail_api.schemas import Status

# Twice what the app accepts: however a URL or a header is cut, what is left is still refused by
# the app's own check, in the error shape. (httptools cannot parse a URL over 65,535 bytes and
# would answer uvicorn's plain-text 400; it sets no limit on headers at all.)
KEEP_URL_BYTES = 2 * MAX_URL_BYTES
KEEP_HEADER_BYTES = 2 * MAX_HEADER_BYTES


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, keeping at most KEEP_URL_BYTES of the URL and
    KEEP_HEADER_BYTES of headers, and answering what it cannot parse in the error shape."""

    _header_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        room = KEEP_URL_BYTES - len(self.url)
        if room > 0:
            super().on_url(url[:room])

    def on_header(self, name: bytes, value: bytes) -> None:
        room = KEEP_HEADER_BYTES - self._header_bytes
        if room <= 0:
            return
        name, value = name[:room], value[: max(room - len(name), 0)]
        self._header_bytes += len(name) + len(value)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps(Status(code=INVALID_ARGUMENT, message=msg).model_dump(by_alias=True))
        head = [b"HTTP/1.1 400 Bad Request"]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"x-content-type-options: nosniff",
            b"cache-control: no-store",
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
