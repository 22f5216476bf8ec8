"""Verimail's models library: what the API and the worker agree on."""
