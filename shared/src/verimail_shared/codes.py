"""Single-use verification codes: made by the worker, checked by the API, stored only hashed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

CODE_BYTES = 32  # 256 bits (ASVS 2.3.1 asks for 112 or more)


def new_key() -> bytes:
    """A key for `job_code` from the OS's CSPRNG."""
    return secrets.token_bytes(CODE_BYTES)


def job_code(key: bytes, job_id: str) -> str:
    """The code of one job, URL-safe, 43 characters: HMAC-SHA256 of the job id under the
    workers' key. Every run of the job derives the same code, so a re-run's email carries the
    same link as an earlier run's whose outcome was lost (decision 091); without the key, a job
    id (which logs and headers show) says nothing of its code."""
    digest = hmac.new(key, b"verify-email\0" + job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_code(code: str) -> str:
    """SHA-256, hex. A random 256-bit code needs no salt or slow hash: it cannot be guessed."""
    return hashlib.sha256(code.encode()).hexdigest()


def code_matches(stored_hash: str, given: str) -> bool:
    """Compare in constant time, so response timing says nothing about the stored hash."""
    return hmac.compare_digest(stored_hash.encode(), hash_code(given).encode())
