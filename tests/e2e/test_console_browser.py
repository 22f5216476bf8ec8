"""The operator console in a real browser (Debian's Chromium through Playwright), against the
API served by uvicorn, a worker, PostgreSQL, Redis and an SMTP server. Each page is checked
with axe-core and kept as a screenshot in .artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from playwright.async_api import Page, expect
from pydantic import SecretStr

from tests.support.browser import screenshot, serious_violations
from tests.support.polling import eventually
from tests.support.services import running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_api.app import create_app
from verimail_shared.embedded import free_port
from verimail_shared.settings import Settings

TOKEN = "browser-T0ken-0123456789abcdef"


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The API with its console, served over real HTTP on a free port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, timeout=20)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def console_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "admin_token": SecretStr(TOKEN),
            "worker_health_check_interval_seconds": 1,
            "verify_email_defer_seconds": 600,  # every signup's job waits: "run now" has work
            # Other tests' outbox rows share this database: no relay or reconciler runs them
            # here, so that the chart counts this test's jobs only.
            "outbox_relay_after_seconds": 3600,
            "outbox_reconcile_after_seconds": 3600,
        }
    )


@pytest.fixture
async def system(console_settings: Settings, redis: ArqRedis) -> AsyncIterator[str]:
    async with serving(console_settings) as base, running_worker(console_settings):
        yield base


async def sign_up(base: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    body = body or new_user()
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    return body


async def check(page: Page, name: str) -> None:
    """No serious accessibility problem, and a screenshot to look at."""
    assert await serious_violations(page) == [], name
    await screenshot(page, f"console-{name}")


async def sign_in(page: Page, base: str) -> None:
    await page.goto(f"{base}/admin/")
    await expect(page).to_have_url(f"{base}/admin/login")
    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()


async def test_sign_in_run_a_deferred_job_now_see_it_sent_and_sign_out(
    page: Page, system: str, smtp_server: SmtpServer
) -> None:
    body = await sign_up(system)
    await page.goto(f"{system}/admin/login")
    await check(page, "login")
    await sign_in(page, system)
    await expect(page.get_by_role("cell", name="critical")).to_be_visible()
    await check(page, "overview-before")

    await page.get_by_role("link", name="Queues").click()
    await page.get_by_role("link", name="critical", exact=True).click()
    await page.get_by_role("link", name="Deferred", exact=True).click()
    await expect(page.get_by_role("heading", name="Deferred jobs")).to_be_visible()
    job = page.locator(".job")
    await expect(job).to_have_count(1)
    await expect(job).to_contain_text("send_verify_email")
    await expect(job).to_contain_text(body["username"])
    await check(page, "queue-deferred")

    await job.get_by_role("button", name="Run now").click()
    await expect(page.get_by_role("status")).to_contain_text("is due now")
    await eventually(lambda: smtp_server.to(body["email"]), timeout=30)
    await page.reload()
    await expect(page.locator(".job")).to_have_count(0)  # processed: gone from the queue

    await page.get_by_role("link", name="Signup lookup").click()
    await page.get_by_label("Email or username").fill(body["email"])
    await page.get_by_role("button", name="Look up").click()
    sent = page.locator("dd.sent")
    await expect(sent).to_contain_text("UTC")
    await expect(page.get_by_text("Message-ID")).to_be_visible()
    await check(page, "lookup")

    # The worker reports its hourly counts with its heartbeat (every second here).
    async def chart_shows_one() -> bool:
        await page.goto(f"{system}/admin/")
        return "1 processed" in (await page.locator("svg desc").text_content() or "")

    await eventually(chart_shows_one, timeout=20, interval=0.5)
    await check(page, "overview")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{system}/admin/login")
    await page.goto(f"{system}/admin/lookup")
    await expect(page).to_have_url(f"{system}/admin/login")


async def test_a_dead_letter_from_an_smtp_550_is_requeued_and_its_email_arrives(
    page: Page, system: str, smtp_server: SmtpServer
) -> None:
    body = new_user()
    smtp_server.inbox.refuse[body["email"]] = "550 mailbox unavailable"
    await sign_up(system, body)
    await sign_in(page, system)
    await page.get_by_role("link", name="Queues").click()
    await page.get_by_role("link", name="critical", exact=True).click()
    await page.get_by_role("link", name="Deferred", exact=True).click()
    await page.get_by_role("button", name="Run now").click()

    async def dead_letter_listed() -> bool:
        await page.goto(f"{system}/admin/dead-letters?error=550")
        return await page.get_by_text("mailbox unavailable").count() > 0

    await eventually(dead_letter_listed, timeout=30, interval=0.5)
    await check(page, "dead-letters")
    await page.get_by_role("link", name=re.compile(r"^Dead letter \d+$")).click()
    await expect(page.locator("pre.error-text")).to_contain_text("mailbox unavailable")
    await expect(page.locator("pre").first).to_contain_text(body["username"])
    await check(page, "dead-letter")

    del smtp_server.inbox.refuse[body["email"]]
    await page.get_by_role("button", name="Re-queue").click()
    await expect(page.get_by_role("status")).to_contain_text("re-queued as job")
    await eventually(lambda: smtp_server.to(body["email"]), timeout=30)


async def test_a_wrong_token_is_refused(page: Page, system: str) -> None:
    await page.goto(f"{system}/admin/login")
    await page.get_by_label("Admin token").fill("not-the-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("That token is not right")
    await expect(page).to_have_url(f"{system}/admin/login")
    await check(page, "login-refused")
    await page.goto(f"{system}/admin/")
    await expect(page).to_have_url(f"{system}/admin/login")


async def test_a_post_without_the_csrf_token_is_refused(page: Page, system: str) -> None:
    await sign_in(page, system)
    await page.locator('form[action="/admin/logout"] input[name="csrf"]').evaluate(
        "input => input.remove()"
    )
    async with page.expect_response(f"{system}/admin/logout") as answer:
        await page.get_by_role("button", name="Sign out").click()
    assert (await answer.value).status == 403
    await expect(page.get_by_role("alert")).to_contain_text("nothing was changed")
    await check(page, "csrf-refused")
    await page.goto(f"{system}/admin/")  # still signed in: the forged POST changed nothing
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
