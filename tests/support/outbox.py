"""Outbox rows made directly, as a signup leaves them, for tests of what reads them."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from verimail_shared import db, outbox
from verimail_shared.jobs import SendVerifyEmailPayload, TaskName
from verimail_shared.tables import OutboxTask


async def outbox_rows(
    sessions: async_sessionmaker[AsyncSession], *usernames: str, defer_seconds: float = 0
) -> list[OutboxTask]:
    """A committed `send_verify_email` row for each username (max_tries 1), in that order."""
    rows = [
        outbox.new_task(
            TaskName.SEND_VERIFY_EMAIL,
            SendVerifyEmailPayload(username=name, max_tries=1),
            defer_seconds=defer_seconds,
        )
        for name in usernames
    ]
    async with db.transaction(sessions) as session:
        session.add_all(rows)
    return rows
