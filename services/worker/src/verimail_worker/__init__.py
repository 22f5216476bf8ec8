"""Verimail's worker: takes verification-email tasks from the arq queues and sends them."""
