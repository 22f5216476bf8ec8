"""What a person sees, in a real browser against the real `verimail-api` and `verimail-worker`
commands and an SMTP server: the verification email, the pages its link leads to, and
axe-core's check of each (no serious or critical violation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from playwright.async_api import Page, expect
from sqlalchemy import text

from tests.support.browser import screenshot, serious_violations
from tests.support.polling import eventually
from tests.support.processes import System, running_system
from tests.support.services import database, fetch_value
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import verification_link
from verimail_shared.settings import Settings


@pytest.fixture
def system(settings: Settings, redis: ArqRedis, tmp_path: Path) -> Iterator[System]:
    with running_system(settings, tmp_path) as running:
        yield running


async def sign_up(system: System, smtp: SmtpServer) -> dict[str, str]:
    """A new user whose verification email has arrived."""
    body = new_user()
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        created = await client.post("/v1/create_user", json=body)
    assert created.status_code == 200, created.text
    await eventually(
        lambda: smtp.to(body["email"]), timeout=30, message="the verification email did not arrive"
    )
    return body


async def is_verified(settings: Settings, username: str) -> bool:
    async with database(settings) as engine:
        sql = "SELECT is_email_verified FROM users WHERE username = :u"
        return bool(await fetch_value(engine, sql, u=username))


async def looks_right(page: Page, name: str) -> None:
    """Keep a screenshot of the page, and check it with axe-core."""
    await screenshot(page, name)
    assert await serious_violations(page) == [], name


async def test_open_the_link_confirm_and_be_verified_once(
    system: System, settings: Settings, smtp_server: SmtpServer, page: Page
) -> None:
    user = await sign_up(system, smtp_server)
    link = smtp_server.link_to(user["email"])
    assert link.startswith(system.base_url)

    await page.goto(link)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your email address")
    await expect(page.get_by_text(user["email"])).to_be_visible()
    await looks_right(page, "verify-1-confirm")
    assert await is_verified(settings, user["username"]) is False  # opening it used nothing

    # A second tab on the same link, as a person who opened the email twice has.
    other = await page.context.new_page()
    await other.goto(link)

    await page.get_by_role("button", name="Confirm my email").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Email verified")
    await looks_right(page, "verify-2-verified")
    assert await is_verified(settings, user["username"]) is True

    await other.get_by_role("button", name="Confirm my email").click()
    await expect(other.get_by_role("heading", level=1)).to_have_text("Link already used")
    await looks_right(other, "verify-3-already-used-after-a-second-click")

    await page.goto(link)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Link already used")
    await expect(page.get_by_role("button")).to_have_count(0)


async def test_an_expired_link_offers_a_form_that_sends_a_new_email(
    system: System, settings: Settings, smtp_server: SmtpServer, page: Page
) -> None:
    user = await sign_up(system, smtp_server)
    link = smtp_server.link_to(user["email"])
    async with database(settings) as engine, engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE verify_emails SET expired_at = now() - interval '1 second' "
                "WHERE username = :u"
            ),
            {"u": user["username"]},
        )

    await page.goto(link)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Link expired")
    email = page.get_by_label("Email address")
    await expect(email).to_have_value(user["email"])
    await expect(page.get_by_text("sign in")).to_have_count(0)
    await looks_right(page, "verify-4-expired-with-resend-form")

    # An address the browser lets through but the API does not: the form comes back, the
    # error tied to the field.
    await email.fill("alice@mail.invalid")
    await page.get_by_role("button", name="Send me a new email").click()
    await expect(page.get_by_label("Email address")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Email address")).to_have_accessible_description(
        "Enter an email address such as name@example.com."
    )
    await looks_right(page, "verify-4b-resend-form-with-an-error")

    await page.get_by_label("Email address").fill(user["email"])
    await page.get_by_role("button", name="Send me a new email").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    await looks_right(page, "verify-5-resend-answer")
    await eventually(
        lambda: len(smtp_server.to(user["email"])) == 2,
        timeout=30,
        message="the new verification email did not arrive",
    )

    # The new email's link works like the first one did.
    new_link = verification_link(smtp_server.to(user["email"])[-1])
    assert new_link is not None and new_link != link
    await page.goto(new_link)
    await page.get_by_role("button", name="Confirm my email").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Email verified")
    assert await is_verified(settings, user["username"]) is True


async def test_a_mangled_link_says_not_valid(system: System, page: Page) -> None:
    await page.goto(f"{system.base_url}/v1/verify_email?email_id=1&secret_code={'x' * 43}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Link not valid")
    await looks_right(page, "verify-6-invalid-link")


async def test_the_verification_email_passes_the_accessibility_check(
    system: System, smtp_server: SmtpServer, page: Page
) -> None:
    user = await sign_up(system, smtp_server)
    (message,) = smtp_server.to(user["email"])
    html = message.get_body(("html",))
    assert html is not None
    await page.set_content(html.get_content())
    await expect(page).to_have_title(message["Subject"])
    assert await page.evaluate("document.documentElement.lang") == "en"
    await looks_right(page, "email-verify-html-part")
