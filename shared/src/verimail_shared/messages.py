"""A verification email's Message-ID: one per job, so the worker that sends it and the
operator who looks a signup up name the same email."""

from __future__ import annotations

from email.headerregistry import Address
from email.utils import parseaddr


def verify_message_id(job_id: str, email_sender: str) -> str:
    address = parseaddr(email_sender)[1]
    domain = Address(addr_spec=address).domain if "@" in address else "verimail.invalid"
    return f"<verify-{job_id}@{domain}>"
