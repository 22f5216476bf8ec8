"""Console pages at scale: the median time of every console page with 100,000 queued jobs and
10,000 dead letters, side by side with the same pages over 1% of that data (the baseline).

A page whose reads are bounded answers in about the same time at both sizes (ratio near 1);
one that reads the whole queue or table grows with it. The target is a median under 200 ms
at full size. Also printed: Redis commands per page (from INFO commandstats), which stay the
same at both sizes when every read is a page.

    uv run --group bench python bench/console.py --jobs 100000 --dead 10000 --requests 30

`verimail-api` runs as its own process (with ADMIN_TOKEN) against an embedded PostgreSQL and
Redis; the client signs in once and asks for each page in turn. JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from common import Bench, load_average, parser, print_load, write_results
from redis.asyncio import Redis
from sqlalchemy import text

from verimail_shared import db
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

TOKEN = "bench-console-token-0123456789"  # noqa: S105  (a throwaway server's)
TARGET_MS = 200.0
PAGES = {
    "overview": "/admin/",
    "queues": "/admin/queues",
    "ready, first page": "/admin/queues/critical?state=ready",
    "ready, last page": "/admin/queues/critical?state=ready&page={ready_last}",
    "deferred, first page": "/admin/queues/critical?state=deferred",
    "in progress": "/admin/queues/critical?state=in_progress",
    "dead letters": "/admin/dead-letters",
    "dead letters, last page": "/admin/dead-letters?page={dead_last}",
    "dead letters, error filter": "/admin/dead-letters?error=mailbox&task=send_verify_email",
    "dead letter detail": "/admin/dead-letters/{dead_id}",
    "signup lookup": "/admin/lookup?q={email}",
}
PAGE_SIZE = 25


async def fill_redis(redis: Redis, start: int, stop: int) -> None:
    """Jobs `start`…`stop` in arq's layout: half due (ready), half due in an hour (deferred)."""
    now = int(time.time() * 1000)
    for first in range(start, stop, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for index in range(first, min(first + 2000, stop)):
                job_id = f"bench-{index:07d}"
                due = now - 60_000 + index if index % 2 == 0 else now + 3_600_000 + index
                data = {
                    "t": 1,
                    "f": "send_verify_email",
                    "a": [{"username": f"user{index}", "max_tries": 10, "request_id": "b"}],
                    "k": {},
                    "et": now,
                }
                pipe.set(f"arq:job:{job_id}", json.dumps(data), px=86_400_000)
                pipe.zadd("arq:queue:critical", {job_id: due})
            await pipe.execute()


async def fill_postgres(settings: Settings, users: tuple[int, int], dead: tuple[int, int]) -> None:
    """Users with one verification email and one outbox row each, and dead letters."""
    # Each statement fills ids a..b-1 of its table, generated in PostgreSQL.
    statements = [
        (
            "INSERT INTO users (username, hashed_password, full_name, email) "
            "SELECT 'user' || i, 'not-a-hash', 'Bench User', 'user' || i || '@example.com' "
            "FROM generate_series(:a, :b - 1) AS i",
            users,
        ),
        (
            "INSERT INTO outbox (job_id, task, payload, due_at, dispatched_at) "
            "SELECT 'bench-' || lpad(i::text, 7, '0'), 'send_verify_email', "
            "jsonb_build_object('username', 'user' || i, 'max_tries', 10), now(), now() "
            "FROM generate_series(:a, :b - 1) AS i",
            users,
        ),
        (
            "INSERT INTO verify_emails (username, email, secret_code_hash, job_id, sent_at) "
            "SELECT 'user' || i, 'user' || i || '@example.com', md5(i::text), "
            "'bench-' || lpad(i::text, 7, '0'), now() FROM generate_series(:a, :b - 1) AS i",
            users,
        ),
        (
            "INSERT INTO dead_tasks (job_id, task, queue, payload, tries, last_error) "
            "SELECT 'dead-' || i, 'send_verify_email', 'critical', "
            "jsonb_build_object('username', 'user' || i, 'max_tries', 10), 10, "
            "CASE WHEN i % 3 = 0 THEN 'SMTPRecipientsRefused: 550 mailbox unavailable' "
            "ELSE 'TimeoutError: SMTP server did not answer' END "
            "FROM generate_series(:a, :b - 1) AS i",
            dead,
        ),
    ]
    engine = db.create_engine(settings)
    async with engine.begin() as connection:
        for sql, (first, end) in statements:
            await connection.execute(text(sql), {"a": first, "b": end})
        await connection.execute(text("ANALYZE"))
    await engine.dispose()


async def sign_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/admin/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, "no CSRF field on the login form"
    answer = await client.post("/admin/login", data={"token": TOKEN, "csrf": csrf[1]})
    assert answer.status_code == 303, answer.text


async def redis_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def measure(
    client: httpx.AsyncClient, redis: Redis, paths: dict[str, str], requests: int
) -> dict[str, dict[str, Any]]:
    result = {}
    for name, path in paths.items():
        for _ in range(3):  # warm the pools and caches
            assert (await client.get(path)).status_code == 200, path
        times = []
        before = await redis_calls(redis)
        for _ in range(requests):
            started = time.perf_counter()
            answer = await client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, (path, answer.status_code)
        calls = (await redis_calls(redis) - before - 1) / requests  # less the INFO itself
        result[name] = {"median_ms": statistics.median(times), "runs_ms": times, "redis": calls}
    return result


async def scale(
    client: httpx.AsyncClient, redis: Redis, jobs: int, dead: int, requests: int
) -> dict[str, dict[str, Any]]:
    paths = {
        name: path.format(
            ready_last=max(1, -(-(jobs // 2) // PAGE_SIZE)),
            dead_last=max(1, -(-dead // PAGE_SIZE)),
            dead_id=dead // 2 or 1,
            email=f"USER{jobs // 3}@example.com",
        )
        for name, path in PAGES.items()
    }
    return await measure(client, redis, paths, requests)


async def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    settings: Settings = bench.settings()
    redis = Redis.from_url(bench.redis_url)
    port = free_port()
    env = bench.env(
        ADMIN_TOKEN=TOKEN, API_PORT=str(port), LOG_LEVEL="WARNING", RATE_LIMIT_ADMIN_LOGIN="off"
    )
    api = bench.spawn([str(Path(sys.executable).with_name("verimail-api"))], "api", env)
    results: dict[str, Any] = {}
    try:
        wait_for_port(port, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await sign_in(client)
            small_jobs, small_dead = args.jobs // 100, args.dead // 100
            await fill_redis(redis, 0, small_jobs)
            await fill_postgres(settings, (0, small_jobs), (1, small_dead + 1))
            results["baseline"] = await scale(client, redis, small_jobs, small_dead, args.requests)
            await fill_redis(redis, small_jobs, args.jobs)
            await fill_postgres(settings, (small_jobs, args.jobs), (small_dead + 1, args.dead + 1))
            results["full"] = await scale(client, redis, args.jobs, args.dead, args.requests)
    finally:
        api.terminate()
        api.wait(30)
        await redis.aclose()
    return results


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    small, full = results["baseline"], results["full"]
    print(
        f"\nconsole pages, median of {args.requests} requests each; baseline "
        f"{args.jobs // 100:,} jobs / {args.dead // 100:,} dead letters, full "
        f"{args.jobs:,} / {args.dead:,}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'page':<28} {'baseline ms':>12} {'full ms':>9} {'full ÷ base':>12} "
        f"{'redis/page':>11} {'< 200 ms':>9}"
    )
    for name in PAGES:
        a, b = small[name]["median_ms"], full[name]["median_ms"]
        print(
            f"{name:<28} {a:>12.1f} {b:>9.1f} {b / a:>12.2f} "
            f"{small[name]['redis']:>5.0f}/{full[name]['redis']:<5.0f} "
            f"{'yes' if b < TARGET_MS else 'NO':>9}"
        )


def main() -> None:
    cli = parser(__doc__, workers=())
    cli.add_argument("--jobs", type=int, default=100_000)
    cli.add_argument("--dead", type=int, default=10_000)
    cli.add_argument("--requests", type=int, default=30)
    args = cli.parse_args()
    load = load_average()
    with Bench.running(args.redis_url) as bench:
        results = asyncio.run(run(args, bench))
    report(args, results)
    print_load("at the start", load)
    document = {"args": vars(args), "id": uuid.uuid4().hex, "load_average": load, **results}
    print(f"\nwritten to {write_results('console', document)}")


if __name__ == "__main__":
    main()
