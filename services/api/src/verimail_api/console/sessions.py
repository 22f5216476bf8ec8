"""Console sign-in: a session per operator, named by a signed cookie and kept in Redis.

The cookie holds a random session id and its HMAC; the key is derived from ADMIN_TOKEN, so
rotating the token ends every session. Redis holds the session's CSRF token under a hash of
the id, expiring after ADMIN_SESSION_IDLE_MINUTES without a request; signing out deletes it,
so a copied cookie dies with the session (a cookie alone could not be revoked).

The sign-in form, which comes before any session, carries a CSRF token too: the HMAC of a
random nonce that a short-lived cookie of its own holds (a double-submit cookie).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.responses import Response

from verimail_shared.settings import Settings

COOKIE = "verimail_console"
LOGIN_COOKIE = "verimail_console_login"
COOKIE_PATH = "/admin"
SESSION_KEY_PREFIX = "verimail:console:session:"
LOGIN_COOKIE_SECONDS = 3600


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    created_at: float


class Sessions:
    def __init__(self, settings: Settings, redis: ArqRedis) -> None:
        if settings.admin_token is None:
            raise ValueError("the console needs ADMIN_TOKEN")
        self.redis = redis
        self.token = settings.admin_token.get_secret_value().encode()
        self.key = hmac.new(self.token, b"verimail-console-cookie", hashlib.sha256).digest()
        self.idle_seconds = settings.admin_session_idle_minutes * 60
        self.secure = settings.public_base_url.lower().startswith("https://")

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison with ADMIN_TOKEN."""
        return hmac.compare_digest(given.encode(), self.token)

    def _sign(self, value: str) -> str:
        digest = hmac.new(self.key, value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _unsign(self, cookie: str | None) -> str | None:
        if not cookie or cookie.count(".") != 1:
            return None
        value, signature = cookie.split(".")
        return value if hmac.compare_digest(signature, self._sign(value)) else None

    @staticmethod
    def _redis_key(session_id: str) -> str:
        return SESSION_KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()

    async def start(self, request: Request, response: Response) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time())
        record = json.dumps({"csrf": session.csrf, "created_at": session.created_at})
        await self.redis.set(self._redis_key(session.id), record, ex=self.idle_seconds)
        self._set_cookie(request, response, COOKIE, f"{session.id}.{self._sign(session.id)}")
        self._set_cookie(request, response, LOGIN_COOKIE, "", max_age=0)
        return session

    async def current(self, request: Request) -> Session | None:
        """The request's live session, its idle time reset; None if absent, forged or expired."""
        session_id = self._unsign(request.cookies.get(COOKIE))
        if session_id is None:
            return None
        key = self._redis_key(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, self.idle_seconds)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        record = json.loads(raw)
        return Session(session_id, record["csrf"], record["created_at"])

    async def end(self, session: Session, request: Request, response: Response) -> None:
        await self.redis.delete(self._redis_key(session.id))
        self._set_cookie(request, response, COOKIE, "", max_age=0)

    def login_csrf(self, request: Request) -> tuple[str, str | None]:
        """The sign-in form's CSRF token, bound to a nonce cookie; and that cookie's new value
        when the request had none (`set_login_cookie` sets it)."""
        nonce = self._unsign(request.cookies.get(LOGIN_COOKIE))
        cookie = None
        if nonce is None:
            nonce = secrets.token_urlsafe(16)
            cookie = f"{nonce}.{self._sign(nonce)}"
        return self._sign("login:" + nonce), cookie

    def set_login_cookie(self, request: Request, response: Response, value: str) -> None:
        self._set_cookie(request, response, LOGIN_COOKIE, value, LOGIN_COOKIE_SECONDS)

    def login_csrf_valid(self, request: Request, given: str) -> bool:
        nonce = self._unsign(request.cookies.get(LOGIN_COOKIE))
        return nonce is not None and hmac.compare_digest(given, self._sign("login:" + nonce))

    @staticmethod
    def csrf_valid(session: Session, given: str) -> bool:
        return hmac.compare_digest(given.encode(), session.csrf.encode())

    def _set_cookie(
        self,
        request: Request,
        response: Response,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        """Secure when PUBLIC_BASE_URL is https or the request came over https (a trusted
        proxy's X-Forwarded-Proto counts: `ForwardedSchemeMiddleware`)."""
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=COOKIE_PATH,
            secure=self.secure or request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
