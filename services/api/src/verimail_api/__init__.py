"""Verimail's HTTP API: signup and email verification (Starlette)."""
