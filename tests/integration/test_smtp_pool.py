"""The SMTP connection pool, and the check before the final dot, against a real SMTP server
(aiosmtpd)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib
import pytest
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from verimail_shared.embedded import free_port
from verimail_shared.settings import Settings
from verimail_worker.confirming_smtp import ConfirmingSMTP
from verimail_worker.smtp_pool import SmtpPool


@dataclass
class Recorder:
    """Keeps each message's recipient with the client port it came from, and QUITs; can hang
    up on a client instead of answering its next MAIL."""

    received: list[tuple[str, int]] = field(default_factory=list)
    quits: int = 0
    hang_up_on_next_mail: bool = False
    answer_delay: float = 0.0  # before the answer to a message

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.hang_up_on_next_mail:
            self.hang_up_on_next_mail = False
            assert server.transport is not None
            server.transport.close()  # no reply: the client finds the connection gone
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        port = session.peer[1] if isinstance(session.peer, tuple) else 0
        self.received.extend((address, port) for address in envelope.rcpt_tos)
        await asyncio.sleep(self.answer_delay)
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    def ports(self) -> set[int]:
        return {port for _, port in self.received}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class Server:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.port = free_port()
        self._controller = self._start()

    def _start(self) -> Controller:
        controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)
        controller.start()
        return controller

    def restart(self) -> None:
        """Stop, hanging up on every client, and start again on the same port."""
        self._controller.stop()
        self._controller = self._start()

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[Server]:
    server = Server(recorder)
    yield server
    server.stop()


def pool_for(server: Server, size: int = 10) -> SmtpPool:
    settings = Settings(_env_file=None, smtp_host="127.0.0.1", smtp_port=server.port)
    return SmtpPool(settings, size=size)


def message(to: str) -> EmailMessage:
    email = EmailMessage()
    email["From"] = "no-reply@verimail.example"
    email["To"] = to
    email["Subject"] = "Verify your email address"
    email.set_content("hello")
    return email


async def test_one_connection_carries_one_email_after_another(
    server: Server, recorder: Recorder
) -> None:
    pool = pool_for(server)
    for n in range(5):
        await pool.send(message(f"user{n}@example.com"))
    await pool.close()
    assert [address for address, _ in recorder.received] == [
        f"user{n}@example.com" for n in range(5)
    ]
    assert len(recorder.ports()) == 1
    assert recorder.quits == 1


async def test_concurrent_sends_use_at_most_size_connections(
    server: Server, recorder: Recorder
) -> None:
    pool = pool_for(server, size=3)
    await asyncio.gather(*(pool.send(message(f"user{n}@example.com")) for n in range(30)))
    await pool.close()
    assert len(recorder.received) == 30
    assert len(recorder.ports()) <= 3


def restart_the_server(server: Server, recorder: Recorder) -> None:
    server.restart()


def hang_up_at_the_next_mail(server: Server, recorder: Recorder) -> None:
    recorder.hang_up_on_next_mail = True


@pytest.mark.parametrize(
    "drop",
    [
        pytest.param(restart_the_server, id="closed-while-idle"),
        pytest.param(hang_up_at_the_next_mail, id="dropped-mid-send"),
    ],
)
async def test_a_reused_connection_the_server_dropped_is_replaced_and_the_email_sent(
    server: Server, recorder: Recorder, drop: Callable[[Server, Recorder], None]
) -> None:
    pool = pool_for(server)
    await pool.send(message("first@example.com"))
    drop(server, recorder)
    await pool.send(message("second@example.com"))
    await pool.close()
    assert [address for address, _ in recorder.received] == [
        "first@example.com",
        "second@example.com",
    ]
    assert len(recorder.ports()) == 2


async def test_a_new_connection_dropped_mid_send_fails_the_send(
    server: Server, recorder: Recorder
) -> None:
    pool = pool_for(server)
    recorder.hang_up_on_next_mail = True
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await pool.send(message("first@example.com"))
    await pool.send(message("second@example.com"))  # the broken connection is not reused
    await pool.close()
    assert [address for address, _ in recorder.received] == ["second@example.com"]


async def test_a_failed_confirmation_before_the_final_dot_leaves_the_server_no_message(
    server: Server, recorder: Recorder
) -> None:
    confirmed: list[str] = []

    async def refuse() -> None:
        raise ConnectionError("the database went away")

    async def accept() -> None:
        confirmed.append("yes")

    pool = pool_for(server)
    with pytest.raises(ConnectionError):
        await pool.send(message("lost@example.com"), confirm=refuse)
    await pool.send(message("kept@example.com"), confirm=accept)
    await pool.close()
    assert [address for address, _ in recorder.received] == ["kept@example.com"]
    assert confirmed == ["yes"]


class Freezer(asyncio.Protocol):
    """Freezes the event loop while it reads its socket, as a process stopped (SIGSTOP) in its
    I/O poll is frozen: on waking, the loop runs its due timers before it polls again."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def data_received(self, data: bytes) -> None:
        time.sleep(self.seconds)


def test_a_process_paused_past_the_dots_timeout_reads_the_answer_waiting_for_it(
    server: Server, recorder: Recorder
) -> None:
    """The loop is frozen from just after the dot until past the SMTP timeout, while the server
    answers 250. Under uvloop, the worker's loop, the expired timer runs first on waking; the
    answer in the socket must still be read, or an identical copy follows (decision 090)."""
    timeout = 0.5
    recorder.answer_delay = 0.05  # the freeze starts first

    async def scenario() -> aiosmtplib.SMTPResponse:
        ours, theirs = socket.socketpair()
        await asyncio.get_running_loop().create_connection(lambda: Freezer(timeout * 3), sock=ours)
        client = ConfirmingSMTP(hostname="127.0.0.1", port=server.port, timeout=timeout)
        await client.connect()
        assert client.protocol is not None
        write = client.protocol.write

        def write_then_freeze(data: bytes) -> None:
            write(data)
            if data == b".\r\n":
                theirs.send(b"freeze")

        client.protocol.write = write_then_freeze  # type: ignore[method-assign]

        async def confirm() -> None:
            pass

        client.confirm = confirm
        await client.mail("no-reply@verimail.example")
        await client.rcpt("paused@example.com")
        try:
            return await client.data(message("paused@example.com").as_bytes())
        finally:
            client.close()
            theirs.close()

    response = uvloop.run(scenario())
    assert response.code == 250
    assert [address for address, _ in recorder.received] == ["paused@example.com"]
