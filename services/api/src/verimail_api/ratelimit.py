"""Rate limits kept in Redis, so every API replica counts the same requests.

A fixed window per (limit, key): one INCR and one EXPIRE per request, pipelined. Keys are
hashed, so no address or email sits in Redis in the clear. If Redis does not answer, requests
are let through: a limiter must not turn a Redis outage into an API outage (the signup path
does not need Redis either, thanks to the outbox).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from starlette.requests import Request

from verimail_shared.errors import ResourceExhausted
from verimail_shared.settings import Settings

log = structlog.get_logger(__name__)
PREFIX = "verimail:ratelimit:"
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Rate:
    limit: int
    period_seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """`10/minute`, `3/hour`, …; `off` (or empty) means no limit."""
        if text.strip().lower() in {"", "off", "none"}:
            return None
        count, _, period = text.partition("/")
        if period.strip() not in PERIODS or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"a rate is `<count>/<second|minute|hour|day>` or `off`, not {text!r}")
        return cls(int(count), PERIODS[period.strip()])


class RateLimiter:
    def __init__(self, redis: ArqRedis, timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout

    async def hit(self, name: str, key: str, rate: Rate | None) -> None:
        """Count one request for `key` under `name`; ResourceExhausted when over the rate."""
        if rate is None:
            return
        now = time.time()
        window = int(now // rate.period_seconds)
        digest = hashlib.sha256(f"{name}:{key}".encode()).hexdigest()[:32]
        redis_key = f"{PREFIX}{name}:{digest}:{window}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(redis_key)
                pipe.expire(redis_key, rate.period_seconds + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_unavailable", limit=name, error=f"{type(exc).__name__}: {exc}")
            return
        if count > rate.limit:
            retry_after = math.ceil((window + 1) * rate.period_seconds - now)
            raise ResourceExhausted(f"too many requests, retry in {retry_after}s", retry_after)


def client_ip(
    request: Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy (clients can forge the rest)."""
    peer = request.client.host if request.client else "unknown"
    if not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not is_trusted(hop, trusted):
            return hop
    return peer


class UntrustedForwarding:
    """Warns while requests carry X-Forwarded-For from a peer outside TRUSTED_PROXIES: behind a
    proxy that is not listed, every client shares the proxy's rate limits. The first such
    request after start-up warns at once; then one warning an hour at most, with the count of
    such requests since the last one."""

    interval_seconds = 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self._requests = 0

    def seen(self, peer: str) -> None:
        self._requests += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_seconds:
            return
        log.warning(
            "untrusted_x_forwarded_for",
            peer=peer,
            requests=self._requests,
            fix="behind a proxy, set TRUSTED_PROXIES to its address range (docs/deploy.md); "
            "until then every client behind it shares one rate limit",
        )
        self._last, self._requests = now, 0


def trusted_networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """TRUSTED_PROXIES as networks."""
    return [ipaddress.ip_network(proxy, strict=False) for proxy in settings.trusted_proxies]


def is_trusted(address: str, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
