"""Password hashing with argon2id, off the event loop."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from verimail_shared.settings import Settings

# Hashing threads run below the event loop's CPU priority: a saturated pool then cannot keep the
# loop (and every request on it) waiting for a core, and when the loop is idle they still get all.
HASHING_NICENESS = 10


def normalize(password: str) -> str:
    """NFKC, as NIST SP 800-63B 5.1.1.2 advises: the same password typed on another keyboard
    or system is the same password."""
    return unicodedata.normalize("NFKC", password)


def cores() -> int:
    """The CPUs this process may run on: a container's cpuset, not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def yield_to_the_event_loop() -> None:
    """Lower the calling thread's CPU priority (Linux sets niceness per thread)."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


def hasher(settings: Settings) -> PasswordHasher:
    """argon2id with the configured parameters."""
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )


class Passwords:
    """Hashes on a thread pool of one thread per core, below the event loop's priority: argon2
    releases the GIL while it works, and more threads than cores would only queue inside the
    kernel instead of here."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = hasher(settings)
        self._pool = ThreadPoolExecutor(
            max_workers=cores(), thread_name_prefix="argon2", initializer=yield_to_the_event_loop
        )

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, normalize(password))

    async def verify(self, hashed: str, password: str) -> tuple[bool, str | None]:
        """Whether `password` matches; and a new hash when the parameters have changed since
        `hashed` was made (rehash at the next successful check, as OWASP advises)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, hashed, password)

    def _verify(self, hashed: str, password: str) -> tuple[bool, str | None]:
        password = normalize(password)
        try:
            self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False, None
        if self._hasher.check_needs_rehash(hashed):
            return True, self._hasher.hash(password)
        return True, None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
