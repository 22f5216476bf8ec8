"""The production-shape test bed: Debian's PostgreSQL with TLS, PgBouncer and Redis with TLS
and an ACL user, started for real and checked for what the e2e and chaos tests rely on."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio
from arq.connections import ArqRedis
from redis.exceptions import NoPermissionError
from sqlalchemy import text

from tests.support.pgbouncer import PgBouncer
from tests.support.polling import eventually
from tests.support.production_postgres import BIN_DIR, TlsPostgres, require_binary
from tests.support.production_redis import TlsRedis
from tests.support.tls import Certificates, make_certificates
from verimail_shared import queue
from verimail_shared.db import engine_for
from verimail_shared.jobs import (
    TASK_QUEUES,
    WAKEUP_CHANNEL,
    Queue,
    TaskName,
    deserialize_job,
    serialize_job,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def postgres(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[TlsPostgres]:
    server = TlsPostgres(tmp_path_factory.mktemp("production"), certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bouncer(tmp_path: Path, postgres: TlsPostgres, certs: Certificates) -> Iterator[PgBouncer]:
    server = PgBouncer(
        tmp_path,
        postgres.host,
        postgres.port,
        default_pool_size=2,
        users={"verimail": postgres.password},
        server_tls_ca_file=certs.ca_file,
        client_tls=(certs.server_cert_file, certs.server_key_file),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certificates) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path, certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def verimail_redis(tls_redis: TlsRedis) -> AsyncIterator[ArqRedis]:
    """Verimail's client as the ACL user."""
    pool = redis.asyncio.ConnectionPool.from_url(
        tls_redis.url, ssl_ca_certs=str(tls_redis.ca_file), socket_timeout=10
    )
    client = ArqRedis(pool, job_serializer=serialize_job, job_deserializer=deserialize_job)
    yield client
    await client.aclose(close_connection_pool=True)


def psql(url: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary(BIN_DIR / "psql")
    return subprocess.run(
        [
            str(binary),
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def server_pid(url: str) -> int:
    connection = await asyncpg.connect(url, statement_cache_size=0)
    try:
        async with connection.transaction():
            pid: int = await connection.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")
    finally:
        await connection.close()
    return pid


def other_ca(url: str, certs: Certificates) -> str:
    return url.replace(str(certs.ca_file), str(certs.other_ca_file))


async def test_postgres_speaks_verify_full_tls_to_psql_and_asyncpg(postgres: TlsPostgres) -> None:
    done = psql(postgres.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t"
    connection = await asyncpg.connect(postgres.url)
    try:
        owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        assert await connection.fetchval(owner) == "verimail"
    finally:
        await connection.close()


async def test_postgres_certificate_does_not_verify_against_another_ca(
    postgres: TlsPostgres, certs: Certificates
) -> None:
    done = psql(other_ca(postgres.url, certs))
    assert done.returncode != 0 and "certificate verify failed" in done.stderr
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(other_ca(postgres.url, certs))


async def test_postgres_refuses_connections_without_tls(postgres: TlsPostgres) -> None:
    plain = postgres.url.split("?")[0] + "?sslmode=disable"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(plain)


async def test_postgres_accepts_the_client_certificate_beside_the_password(
    postgres: TlsPostgres, certs: Certificates
) -> None:
    url = f"{postgres.url}&sslcert={certs.client_cert_file}&sslkey={certs.client_key_file}"
    connection = await asyncpg.connect(url)
    try:
        dn = await connection.fetchval(
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
    finally:
        await connection.close()
    assert dn.endswith("CN=verimail")


async def test_postgres_restart_drops_connections_and_keeps_the_database(
    postgres: TlsPostgres,
) -> None:
    connection = await asyncpg.connect(postgres.url)
    await connection.execute("CREATE TABLE IF NOT EXISTS kept (id int)")
    postgres.restart()
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, asyncpg.InterfaceError)):
        await connection.fetchval("SELECT 1")
    await connection.close()
    again = await asyncpg.connect(postgres.url)
    try:
        assert await again.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await again.close()


async def test_pgbouncer_in_transaction_mode_serves_20_clients_on_2_server_connections(
    bouncer: PgBouncer, postgres: TlsPostgres
) -> None:
    url = bouncer.url_for("verimail", postgres.password, "verimail")
    assert "sslmode=verify-full" in url
    pids = await asyncio.gather(*(server_pid(url) for _ in range(20)))
    assert len(set(pids)) <= 2


async def test_pgbouncer_serves_verimails_engine_without_named_statements(
    bouncer: PgBouncer, postgres: TlsPostgres
) -> None:
    engine = engine_for(bouncer.url_for("verimail", postgres.password, "verimail"), 10)

    async def query(n: int) -> int:
        async with engine.begin() as connection:
            value: int = (
                await connection.execute(text("SELECT CAST(:n AS int)"), {"n": n})
            ).scalar_one()
            return value

    try:
        assert await asyncio.gather(*(query(n) for n in range(10))) == list(range(10))
    finally:
        await engine.dispose()


async def test_pgbouncer_pause_holds_queries_until_resume(
    bouncer: PgBouncer, postgres: TlsPostgres
) -> None:
    url = bouncer.url_for("verimail", postgres.password, "verimail")
    connection = await asyncpg.connect(url, statement_cache_size=0)
    try:
        await asyncio.to_thread(bouncer.pause)
        held = asyncio.create_task(connection.fetchval("SELECT 42"))
        await eventually(lambda: waiting_clients(bouncer) >= 1, timeout=30)
        assert not held.done()
        await asyncio.to_thread(bouncer.resume)
        assert await asyncio.wait_for(held, 30) == 42
    finally:
        await connection.close()


def waiting_clients(bouncer: PgBouncer) -> int:
    """Clients waiting for a server connection, summed over the pools (SHOW POOLS' cl_waiting)."""
    rows = [line.split("|") for line in bouncer.admin("SHOW POOLS").splitlines() if line]
    return sum(int(row[3]) for row in rows)


async def test_pgbouncer_restart_drops_connections_on_the_same_port(
    bouncer: PgBouncer, postgres: TlsPostgres
) -> None:
    url = bouncer.url_for("verimail", postgres.password, "verimail")
    connection = await asyncpg.connect(url, statement_cache_size=0)
    port = bouncer.port
    bouncer.restart()
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, asyncpg.InterfaceError)):
        await connection.fetchval("SELECT 1")
    await connection.close()
    assert bouncer.port == port
    assert await server_pid(url) > 0


async def test_pgbouncer_certificate_does_not_verify_against_another_ca(
    bouncer: PgBouncer, postgres: TlsPostgres, certs: Certificates
) -> None:
    url = other_ca(bouncer.url_for("verimail", postgres.password, "verimail"), certs)
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(url, statement_cache_size=0)


async def test_redis_acl_user_enqueues_counts_and_announces_as_verimail_does(
    verimail_redis: ArqRedis,
) -> None:
    async with verimail_redis.pubsub() as pubsub:
        await pubsub.subscribe(WAKEUP_CHANNEL)
        payload = {"username": "nobody", "max_tries": 1}
        assert await queue.enqueue(verimail_redis, TaskName.SEND_VERIFY_EMAIL, payload, job_id="j1")
        counts = await queue.queue_counts(verimail_redis, [q.value for q in Queue])
        assert counts[TASK_QUEUES[TaskName.SEND_VERIFY_EMAIL]].ready == 1
        message = await eventually(lambda: pubsub.get_message(ignore_subscribe_messages=True))
        assert message["channel"].decode() == WAKEUP_CHANNEL
    assert await verimail_redis.ping()


ADMINISTRATION: dict[str, Callable[[ArqRedis], Awaitable[object]]] = {
    "flushall": lambda client: client.flushall(),
    "flushdb": lambda client: client.flushdb(),
    "config": lambda client: client.config_get("*"),
    "keys": lambda client: client.keys("*"),
    "script_flush": lambda client: client.script_flush(),
}


@pytest.mark.parametrize("command", ADMINISTRATION.values(), ids=ADMINISTRATION.keys())
async def test_redis_acl_user_is_denied_administration(
    verimail_redis: ArqRedis, command: Callable[[ArqRedis], Awaitable[object]]
) -> None:
    with pytest.raises(NoPermissionError):
        await command(verimail_redis)


async def test_redis_acl_user_is_denied_keys_and_channels_outside_its_patterns(
    verimail_redis: ArqRedis,
) -> None:
    await verimail_redis.set("verimail:mine", "1")
    with pytest.raises(NoPermissionError):
        await verimail_redis.set("other:key", "1")
    with pytest.raises(NoPermissionError):
        await verimail_redis.publish("other-channel", "1")


async def test_redis_certificate_does_not_verify_against_another_ca(
    tls_redis: TlsRedis, certs: Certificates
) -> None:
    client = redis.asyncio.Redis.from_url(tls_redis.url, ssl_ca_certs=str(certs.other_ca_file))
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            await client.ping()
    finally:
        await client.aclose()
