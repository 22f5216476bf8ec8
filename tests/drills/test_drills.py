"""Fault drills: every signup gets exactly one email, whatever fails on the way.

Each drill asserts users created = emails delivered (one each), duplicates 0, phantom 0.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.drills.conftest import ADMIN_TOKEN, Stack
from tests.support.polling import eventually
from verimail_shared.embedded import verification_link

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLAIMED_JOB_START_SLACK = timedelta(seconds=0.25)


async def settled(stack: Stack, quiet: float = 0.5) -> None:
    """Until no email has arrived for `quiet` seconds."""
    loop = asyncio.get_running_loop()
    count, since = len(stack.smtp.messages), loop.time()
    while loop.time() - since < quiet:
        await asyncio.sleep(0.05)
        if len(stack.smtp.messages) != count:
            count, since = len(stack.smtp.messages), loop.time()


async def test_redis_stopped_during_signups_every_signup_succeeds_and_every_email_arrives(
    stack: Stack,
) -> None:
    stack.start_worker()
    await stack.sign_up(5)
    await asyncio.to_thread(stack.redis_server.stop)
    await stack.sign_up(5)  # all answered 200 while Redis is down
    await asyncio.to_thread(stack.redis_server.start)
    await stack.assert_one_email_per_signup()


async def test_jobs_redis_loses_after_dispatch_are_found_and_sent_once(stack: Stack) -> None:
    """What a Redis crash inside appendfsync's second, or a failover, can do: forget writes."""
    await stack.sign_up(5)  # dispatched to Redis; no worker has taken them yet
    await stack.redis.flushall()
    stack.start_worker()
    await stack.sign_up(2)
    await stack.assert_one_email_per_signup()
    lost = [line for w in stack.workers for line in w.events("outbox_job_lost_requeued")]
    assert lost, "the reconciler found nothing to requeue"


async def test_postgres_stopped_while_tasks_are_due_then_started(stack: Stack) -> None:
    await stack.sign_up(5)  # due at once, but no worker runs them until PostgreSQL is down
    await asyncio.to_thread(stack.postgres.stop)
    stack.start_worker()
    await eventually(
        lambda: len(stack.failures()) >= 2,
        timeout=30,
        message="no failed attempt while PostgreSQL was down",
    )
    assert stack.delivered() == {}
    await asyncio.to_thread(stack.postgres.start)
    await stack.assert_one_email_per_signup()
    failure = stack.failures()[0]
    assert failure["task"] == "send_verify_email" and failure["payload"]["username"]
    assert failure["permanent"] is False


async def test_smtp_421_for_a_while_is_retried_with_backoff_and_delivered_once(
    stack: Stack,
) -> None:
    stack.smtp.inbox.data_reply = "421 4.3.2 service not available, try later"
    stack.start_worker()
    users = await stack.sign_up(3)
    first = users[0]["username"]
    await eventually(
        lambda: len([f for f in stack.failures() if f["payload"]["username"] == first]) >= 3,
        timeout=30,
        message="the 421 was not retried",
    )
    stack.smtp.inbox.data_reply = None
    await stack.assert_one_email_per_signup()
    waits = [f["retry_in_seconds"] for f in stack.failures() if f["payload"]["username"] == first]
    assert all(not f["permanent"] for f in stack.failures())
    # Backoff: each try's ceiling doubles (0.1, 0.2, 0.4 s ...), jittered within [½, 1].
    for job_try, wait in enumerate(waits[:3], start=1):
        ceiling = min(0.1 * 2 ** (job_try - 1), 1)
        assert ceiling / 2 <= wait <= ceiling


async def test_smtp_550_is_a_dead_letter_at_once_and_requeued_after_the_fix(stack: Stack) -> None:
    worker = stack.start_worker()
    (refused,) = await stack.sign_up(1)
    stack.smtp.inbox.refuse[refused["email"]] = "550 5.1.1 no such mailbox"
    stack.users.clear()
    stack.users.append(refused)
    await stack.sign_up(2)

    async def dead_tasks() -> list[dict[str, Any]]:
        response = await stack.client.get("/v1/admin/dead_tasks", headers=ADMIN)
        return list(response.json()["dead_tasks"])

    (dead,) = await eventually(dead_tasks, timeout=30, message="no dead letter")
    assert dead["tries"] == 1
    assert dead["payload"]["username"] == refused["username"]
    assert "550" in str(dead["last_error"])
    failed = [f for f in stack.failures() if f["payload"]["username"] == refused["username"]]
    assert len(failed) == 1 and failed[0]["permanent"] is True
    queues = (await stack.client.get("/v1/admin/queues", headers=ADMIN)).json()["queues"]
    assert {q["name"]: q["dead"] for q in queues}["critical"] == 1
    series = {"queue": "critical", "task": "send_verify_email"}
    assert await stack.metric(worker, "verimail_worker_tasks_failed_total", **series) == 1
    assert await stack.metric(worker, "verimail_worker_tasks_retried_total", **series) == 0

    del stack.smtp.inbox.refuse[refused["email"]]
    retried = await stack.client.post(f"/v1/admin/dead_tasks/{dead['id']}/retry", headers=ADMIN)
    assert retried.status_code == 200, retried.text
    again = await stack.client.post(f"/v1/admin/dead_tasks/{dead['id']}/retry", headers=ADMIN)
    assert again.status_code == 400
    await stack.assert_one_email_per_signup()
    assert await dead_tasks() == []


@pytest.mark.parametrize("stack", [{"worker_job_timeout_seconds": 2}], indirect=True)
async def test_kill_9_of_the_worker_mid_batch_then_restart(stack: Stack) -> None:
    stack.smtp.inbox.rcpt_delay = 0.05
    worker = stack.start_worker()
    await stack.sign_up(30)
    await eventually(lambda: len(stack.delivered()) >= 5, timeout=30)
    # Kill while sends are in flight, but not inside the one round trip between the server's
    # 250 and the sent marker's COMMIT, which no design can close (decision 006): park new
    # sends before their message is taken, and let the ones past that point finish.
    stack.smtp.inbox.hold = True
    await eventually(lambda: stack.smtp.inbox.parked >= 1, timeout=10)
    await settled(stack)
    assert len(stack.delivered()) < 30, "the batch finished before the kill"
    worker.kill()
    stack.smtp.inbox.hold = False
    stack.start_worker()
    await stack.assert_one_email_per_signup(timeout=90)


@pytest.mark.parametrize("stack", [{"worker_job_timeout_seconds": 2}], indirect=True)
async def test_kill_9_after_the_server_took_the_message_resends_the_same_email_whose_link_works(
    stack: Stack,
) -> None:
    """The window no design closes (decision 006): the server has the message, the worker dies
    before its COMMIT. The re-run sends the same email again, and the first one's link works
    (decision 091)."""
    worker = stack.start_worker()

    async def kill_the_sender() -> None:
        stack.smtp.inbox.before_data_reply = None
        await asyncio.to_thread(worker.kill)  # the 250 then goes to a dead connection

    stack.smtp.inbox.before_data_reply = kill_the_sender
    (user,) = await stack.sign_up(1)
    await eventually(lambda: not worker.running, timeout=30, message="the worker never sent")
    stack.start_worker()
    await eventually(lambda: len(stack.smtp.to(user["email"])) == 2, timeout=60)
    first, copy = stack.smtp.to(user["email"])
    assert copy["Message-ID"] == first["Message-ID"]
    assert verification_link(copy) == verification_link(first)
    link = str(verification_link(first)).removeprefix(stack.settings.public_base_url)
    assert (await stack.client.get(link)).json() == {"is_verified": True}
    await stack.assert_one_email_per_signup()
    await settled(stack)
    assert len(stack.smtp.to(user["email"])) == 2


@pytest.mark.parametrize("stack", [{"worker_shutdown_grace_seconds": 15}], indirect=True)
async def test_sigterm_mid_batch_finishes_in_flight_jobs_and_the_rest_run_on_the_next_worker(
    stack: Stack,
) -> None:
    stack.smtp.inbox.rcpt_delay = 0.2
    await stack.sign_up(40)  # before the worker: however slow signups are, the batch is whole
    first = stack.start_worker()
    await eventually(lambda: len(stack.delivered()) >= 5, timeout=30)
    sigterm_at = datetime.now(UTC)
    code = await asyncio.to_thread(first.stop, signal.SIGTERM, 30)
    assert code == 0
    # No job starts after SIGTERM. One claimed just before the signal reached the worker logs
    # its start a moment later (delivery, a Redis round trip): the slack; no more than that.
    starts = [datetime.fromisoformat(line["timestamp"]) for line in first.events("task_started")]
    assert max(starts) <= sigterm_at + CLAIMED_JOB_START_SLACK, "a job started after SIGTERM"
    started = {line["job_id"] for line in first.events("task_started")}
    finished = {line["job_id"] for line in first.events("task_processed")}
    assert started == finished, "a job in flight at SIGTERM did not finish"
    assert len(finished) < 40, "the batch finished before SIGTERM"
    second = stack.start_worker()
    await stack.assert_one_email_per_signup()
    assert not {line["job_id"] for line in second.events("task_processed")} & finished


CREATE_DOOMED_TRIGGER = """
CREATE FUNCTION fail_doomed() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'doomed signup'; END $$;
CREATE CONSTRAINT TRIGGER doomed_commit AFTER INSERT ON users
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
WHEN (NEW.username LIKE 'doomed%') EXECUTE FUNCTION fail_doomed();
"""


@pytest.mark.parametrize(
    "stack",
    [{}, {"signup_enqueue": "in_transaction", "verify_email_max_tries": 3}],
    indirect=True,
    ids=["outbox", "simplebank-in-transaction"],
)
async def test_a_signup_whose_transaction_fails_after_the_enqueue_point_sends_no_email_ever(
    stack: Stack,
) -> None:
    """The commit fails after the task was handed over (simplebank) or written (outbox)."""
    stack.postgres.psql(CREATE_DOOMED_TRIGGER, "drill")
    stack.start_worker()
    doomed = await stack.client.post(
        "/v1/create_user",
        json={
            "username": "doomed_signup",
            "full_name": "Doomed Signup",
            "email": "doomed@example.com",
            "password": "correct horse battery",
        },
    )
    assert doomed.status_code != 200
    await stack.sign_up(3)
    await stack.assert_one_email_per_signup()
    assert "doomed@example.com" not in stack.delivered()
    dead = (await stack.client.get("/v1/admin/dead_tasks", headers=ADMIN)).json()["dead_tasks"]
    if stack.settings.signup_enqueue.value == "outbox":
        assert dead == []  # nothing was ever enqueued
    else:
        # simplebank's phantom task: it ran, found no user, and ended as a dead letter.
        (phantom,) = dead
        assert phantom["payload"]["username"] == "doomed_signup"
        assert "never committed" in phantom["last_error"]
        assert phantom["tries"] == 3  # verify_email_max_tries
        tries = [
            (f["job_try"], f["permanent"])
            for f in stack.failures()
            if f["payload"]["username"] == "doomed_signup"
        ]
        assert sorted(tries) == [(1, False), (2, False), (3, True)]


@pytest.mark.parametrize("stack", [{"worker_shutdown_grace_seconds": 1}], indirect=True)
async def test_jobs_still_running_when_the_grace_ends_run_again_on_the_next_worker(
    stack: Stack,
) -> None:
    stack.smtp.inbox.rcpt_delay = 3  # every send outlasts the grace
    first = stack.start_worker()
    await stack.sign_up(3)
    await eventually(lambda: len(first.events("task_started")) >= 3, timeout=30)
    assert await asyncio.to_thread(first.stop, signal.SIGTERM, 30) == 0
    assert first.events("task_processed") == []
    stack.smtp.inbox.rcpt_delay = 0
    stack.start_worker()
    await stack.assert_one_email_per_signup()
