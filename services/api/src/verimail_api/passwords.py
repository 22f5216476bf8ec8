"""Passwords: argon2id hashing and checking off the event loop, and the common-password list."""

from __future__ import annotations

import asyncio
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from verimail_shared.settings import Settings


@cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords (data/common_passwords.SOURCE.md names the source)."""
    text = (files("verimail_api") / "data" / "common_passwords.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line)


def is_common(password: str) -> bool:
    """NIST SP 800-63B 5.1.1.2: refuse passwords from a list of commonly used ones."""
    return normalize(password).casefold() in common_passwords()


def normalize(password: str) -> str:
    """NFKC, as SP 800-63B 5.1.1.2 advises, so one password typed two ways hashes the same."""
    return unicodedata.normalize("NFKC", password)


@dataclass(frozen=True)
class Checked:
    """The outcome of checking a password: whether it matched, and a new hash to store if the
    stored one was made with other parameters than today's."""

    ok: bool
    new_hash: str | None = None


class Passwords:
    """Hashes on a thread pool sized to the cores: argon2 releases the GIL while it works."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="argon2"
        )

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, normalize(password))

    async def check(self, stored_hash: str, password: str) -> Checked:
        """Compare `password` with `stored_hash` (argon2 compares in constant time); on a match
        with outdated parameters, hash it again with today's, for the caller to store."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._check, stored_hash, password)

    def _check(self, stored_hash: str, password: str) -> Checked:
        try:
            self._hasher.verify(stored_hash, normalize(password))
        except (VerificationError, InvalidHashError):
            return Checked(ok=False)
        if self._hasher.check_needs_rehash(stored_hash):
            return Checked(ok=True, new_hash=self._hasher.hash(normalize(password)))
        return Checked(ok=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
