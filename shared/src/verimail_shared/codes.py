"""Single-use verification codes: made by the worker, checked by the API, stored only hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets

CODE_BYTES = 32  # 256 bits from the OS's CSPRNG (ASVS 2.3.1 asks for 112 or more)


def new_code() -> str:
    """A fresh code, URL-safe: 43 characters."""
    return secrets.token_urlsafe(CODE_BYTES)


def hash_code(code: str) -> str:
    """SHA-256, hex. A random 256-bit code needs no salt or slow hash: it cannot be guessed."""
    return hashlib.sha256(code.encode()).hexdigest()


def code_matches(stored_hash: str, given: str) -> bool:
    """Compare in constant time, so response timing says nothing about the stored hash."""
    return hmac.compare_digest(stored_hash.encode(), hash_code(given).encode())
