"""The send_verify_email task and GET /v1/verify_email, on real PostgreSQL, Redis and SMTP."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from tests.support.polling import eventually
from tests.support.services import api_client, database, fetch_one, fetch_value, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.settings import Settings

HTML = {"Accept": "text/html,application/xhtml+xml"}


def processed(queue: str = "critical") -> float:
    value = REGISTRY.get_sample_value(
        "verimail_worker_tasks_processed_total", {"task": "send_verify_email", "queue": queue}
    )
    return value or 0.0


async def sign_up_and_receive_link(
    client: httpx.AsyncClient, settings: Settings, smtp: SmtpServer
) -> tuple[dict[str, str], str]:
    body = new_user()
    assert (await client.post("/v1/create_user", json=body)).status_code == 200
    async with running_worker(settings):
        await eventually(lambda: smtp.to(body["email"]), message="no verification email")
    return body, smtp.link_to(body["email"])


def relative(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


async def test_the_task_sends_exactly_one_email_whose_link_verifies_the_user(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    settings = settings.model_copy(update={"verify_email_ttl_minutes": 42})  # not the default 15
    before = processed()
    async with api_client(settings) as client:
        body, link = await sign_up_and_receive_link(client, settings, smtp_server)
        response = await client.get(relative(link))

    assert len(smtp_server.to(body["email"])) == 1
    assert processed() == before + 1
    message = smtp_server.to(body["email"])[0]
    assert message["Subject"] == "Verify your email address"
    assert message["Message-ID"].startswith("<verify-")
    assert message.get_body(("html",)) is not None
    assert link.startswith(f"{settings.public_base_url}/v1/verify_email?email_id=")
    assert len(parse_qs(urlsplit(link).query)["secret_code"][0]) >= 32

    assert response.status_code == 200
    assert response.json() == {"is_verified": True}
    async with database(settings) as engine:
        user = await fetch_one(
            engine, "SELECT * FROM users WHERE username = :u", u=body["username"]
        )
        row = await fetch_one(
            engine, "SELECT * FROM verify_emails WHERE username = :u", u=body["username"]
        )
    assert user["is_email_verified"] is True
    assert row["is_used"] is True
    # The code lives VERIFY_EMAIL_TTL_MINUTES from the row's creation.
    lifetime = row["expired_at"] - row["created_at"]
    assert abs(lifetime - timedelta(minutes=42)) < timedelta(seconds=5)


async def test_a_used_code_is_refused(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        _, link = await sign_up_and_receive_link(client, settings, smtp_server)
        assert (await client.get(relative(link))).status_code == 200
        again = await client.get(relative(link))
        page = await client.get(relative(link), headers=HTML)
    assert again.status_code == 400
    assert again.json() == {"code": 9, "message": "verification code already used", "details": []}
    assert page.headers["content-type"].startswith("text/html")
    assert "already used" in page.text


async def test_an_expired_code_is_refused_and_leaves_the_user_unverified(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        body, link = await sign_up_and_receive_link(client, settings, smtp_server)
        async with database(settings) as engine, engine.begin() as connection:
            from sqlalchemy import text

            await connection.execute(
                text(
                    "UPDATE verify_emails SET expired_at = now() - interval '1 second' "
                    "WHERE username = :u"
                ),
                {"u": body["username"]},
            )
        response = await client.get(relative(link))
        page = await client.get(relative(link), headers=HTML)
        async with database(settings) as engine:
            verified = await fetch_value(
                engine,
                "SELECT is_email_verified FROM users WHERE username = :u",
                u=body["username"],
            )
    assert response.status_code == 400
    assert response.json()["message"] == "verification code expired"
    assert "expired" in page.text
    assert verified is False


async def test_a_wrong_code_or_unknown_id_is_404_and_bad_parameters_400(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        _, link = await sign_up_and_receive_link(client, settings, smtp_server)
        email_id = parse_qs(urlsplit(link).query)["email_id"][0]
        wrong = await client.get(f"/v1/verify_email?emailId={email_id}&secretCode={'x' * 43}")
        unknown = await client.get(f"/v1/verify_email?email_id=999999999&secret_code={'x' * 43}")
        invalid = await client.get("/v1/verify_email?email_id=abc&secret_code=short")
        page = await client.get("/v1/verify_email?email_id=abc", headers=HTML)
    assert wrong.status_code == 404 and wrong.json()["code"] == 5
    assert unknown.status_code == 404
    assert invalid.status_code == 400
    fields = {v["field"] for v in invalid.json()["details"][0]["field_violations"]}
    assert fields == {"email_id", "secret_code"}
    assert page.status_code == 404 and "not valid" in page.text


async def test_the_browser_gets_an_html_page_saying_verified(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        _, link = await sign_up_and_receive_link(client, settings, smtp_server)
        page = await client.get(relative(link), headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1" in page.text and "Email verified" in page.text
    assert 'lang="en"' in page.text
