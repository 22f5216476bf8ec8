"""Rendering the verification email."""

from __future__ import annotations

from datetime import UTC, datetime

from verimail_shared.embedded import verification_link
from verimail_shared.settings import Settings
from verimail_worker.letter import VerifyEmailLetter, render, verify_link

SETTINGS = Settings(
    _env_file=None,
    public_base_url="https://verimail.example/",
    email_sender="Verimail <no-reply@mail.example>",
)
LETTER = VerifyEmailLetter(
    to="alice@example.com",
    full_name="Alice <b>Liddell</b>",
    email_id=42,
    secret_code="s3cr3t-code_" + "x" * 31,
    expires_at=datetime(2026, 11, 22, 9, 15, tzinfo=UTC),
    job_id="job1",
)


def test_the_link_points_at_verify_email_with_id_and_code() -> None:
    assert verify_link("https://v.example/", 42, "a b") == (
        "https://v.example/v1/verify_email?email_id=42&secret_code=a+b"
    )


def test_text_and_html_parts_carry_the_same_link() -> None:
    message = render(LETTER, SETTINGS)
    link = verify_link("https://verimail.example", 42, LETTER.secret_code)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert link in text.get_content()
    assert f'href="{link.replace("&", "&amp;")}"' in html.get_content()
    assert verification_link(message) == link


def test_headers_and_a_stable_message_id_per_job() -> None:
    message = render(LETTER, SETTINGS)
    assert message["To"] == "alice@example.com"
    assert message["From"] == "Verimail <no-reply@mail.example>"
    assert message["Message-ID"] == "<verify-job1@mail.example>"
    assert render(LETTER, SETTINGS)["Message-ID"] == message["Message-ID"]


def test_html_is_escaped() -> None:
    html = render(LETTER, SETTINGS).get_body(("html",))
    assert html is not None
    assert "Alice &lt;b&gt;Liddell&lt;/b&gt;" in html.get_content()


def test_the_html_part_has_a_head_with_charset_title_and_language() -> None:
    message = render(LETTER, SETTINGS)
    html = message.get_body(("html",))
    assert html is not None
    content = html.get_content()
    head = content[content.index("<head>") : content.index("</head>")]
    assert '<meta charset="utf-8">' in head
    assert f"<title>{message['Subject']}</title>" in head
    assert content.startswith('<!doctype html>\n<html lang="en">')
    assert html.get_content_charset() == "utf-8"
