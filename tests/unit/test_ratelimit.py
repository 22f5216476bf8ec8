"""Parsing rates and finding the client behind proxies."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
import structlog
from starlette.requests import Request

from verimail_api.ratelimit import Rate, UntrustedForwarding, client_ip


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/minute", Rate(10, 60)),
        ("3/hour", Rate(3, 3600)),
        ("1/second", Rate(1, 1)),
        ("off", None),
        ("", None),
    ],
)
def test_rates_parse(text: str, rate: Rate | None) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["10", "x/minute", "0/minute", "5/fortnight"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate.parse(text)


def request(peer: str, forwarded: str | None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return Request({"type": "http", "client": (peer, 1234), "headers": headers})


PROXIES = [ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # not a proxy: the header is a lie
        ("10.0.0.5", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.7, 10.0.0.9", "198.51.100.7"),  # skip proxies, not more
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "garbage", "garbage"),
    ],
)
def test_client_ip(peer: str, forwarded: str | None, client: str) -> None:
    assert client_ip(request(peer, forwarded), PROXIES) == client


def test_untrusted_forwarding_warns_at_once_then_at_most_once_an_hour() -> None:
    now = [1000.0]
    warner = UntrustedForwarding(clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        warner.seen("192.0.2.1")  # the first after start-up
        for _ in range(5):
            now[0] += 600
            warner.seen("192.0.2.1")  # within the hour: counted, not logged
        now[0] += 601
        warner.seen("192.0.2.1")
    warnings = [log for log in logs if log["event"] == "untrusted_x_forwarded_for"]
    assert [w["requests"] for w in warnings] == [1, 6]
    assert all(w["log_level"] == "warning" and "TRUSTED_PROXIES" in w["fix"] for w in warnings)
