"""The send_verify_email task, GET and POST /v1/verify_email and the resend form, on real
PostgreSQL, Redis and SMTP."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
from arq.connections import ArqRedis
from prometheus_client import REGISTRY
from sqlalchemy import text

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


async def expire(settings: Settings, username: str) -> None:
    async with database(settings) as engine, engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE verify_emails SET expired_at = now() - interval '1 second' "
                "WHERE username = :u"
            ),
            {"u": username},
        )


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
        await expire(settings, body["username"])
        response = await client.get(relative(link))
        page = await client.get(relative(link), headers=HTML)
        verified = await is_verified(settings, body["username"])
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


async def is_verified(settings: Settings, username: str) -> bool:
    async with database(settings) as engine:
        return bool(
            await fetch_value(
                engine, "SELECT is_email_verified FROM users WHERE username = :u", u=username
            )
        )


def form_fields(link: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(link).query).items()}


async def test_a_browser_or_a_scanner_fetching_the_link_gets_a_button_and_verifies_nothing(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        body, link = await sign_up_and_receive_link(client, settings, smtp_server)
        page = await client.get(relative(link), headers=HTML)
        again = await client.get(relative(link), headers=HTML)
        head = await client.head(relative(link))
        verified_before = await is_verified(settings, body["username"])
        pressed = await client.post("/v1/verify_email", data=form_fields(link), headers=HTML)
    assert page.status_code == 200 and again.status_code == 200 and head.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'lang="en"' in page.text
    assert "Confirm my email" in page.text and body["email"] in page.text
    assert '<form method="post" action="verify_email">' in page.text
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert verified_before is False
    assert pressed.status_code == 200 and "Email verified" in pressed.text
    assert await is_verified(settings, body["username"]) is True


async def test_post_uses_the_code_from_a_form_or_json_and_answers_json_to_api_clients(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        by_form, form_link = await sign_up_and_receive_link(client, settings, smtp_server)
        by_json, json_link = await sign_up_and_receive_link(client, settings, smtp_server)
        form = await client.post("/v1/verify_email", data=form_fields(form_link))
        fields = form_fields(json_link)
        camel = {"emailId": int(fields["email_id"]), "secretCode": fields["secret_code"]}
        answer = await client.post("/v1/verify_email", json=camel)
        used = await client.post("/v1/verify_email", json=camel)
        invalid = await client.post("/v1/verify_email", json={"email_id": 0})
    assert form.status_code == 200 and form.json() == {"is_verified": True}
    assert answer.status_code == 200 and answer.json() == {"is_verified": True}
    assert used.status_code == 400 and used.json()["message"] == "verification code already used"
    assert invalid.status_code == 400
    fields_named = {v["field"] for v in invalid.json()["details"][0]["field_violations"]}
    assert fields_named == {"email_id", "secret_code"}
    assert await is_verified(settings, by_form["username"]) is True
    assert await is_verified(settings, by_json["username"]) is True


async def test_pressing_the_button_twice_says_already_used(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        _, link = await sign_up_and_receive_link(client, settings, smtp_server)
        first = await client.post("/v1/verify_email", data=form_fields(link), headers=HTML)
        second = await client.post("/v1/verify_email", data=form_fields(link), headers=HTML)
    assert first.status_code == 200
    assert second.status_code == 400 and "Link already used" in second.text


async def test_the_expired_page_offers_a_form_that_sends_a_new_email(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    async with api_client(settings) as client:
        body, link = await sign_up_and_receive_link(client, settings, smtp_server)
        await expire(settings, body["username"])
        page = await client.get(relative(link), headers=HTML)
        async with running_worker(settings):
            sent = await client.post(
                "/v1/resend_verify_email", data={"email": body["email"]}, headers=HTML
            )
            await eventually(
                lambda: len(smtp_server.to(body["email"])) == 2, message="no second email"
            )
        unknown = await client.post(
            "/v1/resend_verify_email", data={"email": "nobody.at.all@example.com"}, headers=HTML
        )
        typo = await client.post("/v1/resend_verify_email", data={"email": "nope"}, headers=HTML)
    assert page.status_code == 400
    assert "Link expired" in page.text and "sign in" not in page.text.lower()
    assert '<form method="post" action="resend_verify_email">' in page.text
    assert f'value="{body["email"]}"' in page.text
    assert sent.status_code == 200 and "Check your inbox" in sent.text
    # No enumeration: an unknown address gets the same page, with its own address in it.
    assert unknown.status_code == 200
    assert unknown.text == sent.text.replace(body["email"], "nobody.at.all@example.com")
    assert typo.status_code == 400 and 'aria-invalid="true"' in typo.text
    assert 'value="nope"' in typo.text


async def test_too_many_attempts_get_a_page_with_retry_after(
    settings: Settings, redis: ArqRedis
) -> None:
    limited = settings.model_copy(
        update={"rate_limit_verify_email": "1/minute", "rate_limit_resend_ip": "1/minute"}
    )
    link = f"/v1/verify_email?email_id=1&secret_code={'x' * 43}"
    resend = {"email": "alice@example.com"}
    async with api_client(limited) as client:
        await client.get(link, headers=HTML)
        page = await client.get(link, headers=HTML)
        await client.post("/v1/resend_verify_email", data=resend, headers=HTML)
        again = await client.post("/v1/resend_verify_email", data=resend, headers=HTML)
    for answer in (page, again):
        assert answer.status_code == 429
        assert answer.headers["content-type"].startswith("text/html")
        assert int(answer.headers["retry-after"]) > 0
        assert "Too many attempts" in answer.text


async def test_a_form_body_with_too_many_fields_is_400_not_a_crash(
    settings: Settings, redis: ArqRedis
) -> None:
    fields = {f"field{n}": "x" for n in range(50)}
    async with api_client(settings) as client:
        answer = await client.post("/v1/verify_email", data=fields)
        not_json = await client.post(
            "/v1/verify_email",
            content=b"{not json",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert answer.status_code == 400
    assert answer.json()["details"][0]["field_violations"] == [
        {"field": "body", "description": "has too many fields"}
    ]
    assert not_json.status_code == 400 and "must be valid JSON" in not_json.text
