"""Debian binaries the deploy tests run for real; a missing one fails the test with the fix."""

from __future__ import annotations

import shutil

import pytest

# The system's copies first, then PATH (where `uv run` puts .venv/bin first).
SYSTEM_PATH = "/usr/sbin:/usr/bin"

# Debian package that provides each binary; `make tools` (a step of `make test`) installs them.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
}
# Neither in Debian nor on PyPI, so `make tools` cannot install it: tests that need it skip.
ELSEWHERE = {
    "kubectl": (
        "kubectl is not installed (it is in neither Debian nor PyPI, so `make tools` cannot "
        "install it): skipped the checks of the overlay rendered by `kubectl kustomize`; every "
        "manifest file is still validated. Install kubectl from Kubernetes' apt repository "
        "(https://pkgs.k8s.io) or as the release binary (https://dl.k8s.io) to run them."
    ),
}


def require(binary: str) -> str:
    """The binary's path (system's before PATH's); missing: a failure saying how to install it."""
    path = shutil.which(binary, path=SYSTEM_PATH) or shutil.which(binary)
    if path is None and binary in ELSEWHERE:
        pytest.skip(ELSEWHERE[binary])
    if path is None:
        package = PACKAGES.get(binary, binary)
        pytest.fail(
            f"{binary} is not installed: run `make tools` "
            f"(apt-get install -y --no-install-recommends {package})",
            pytrace=False,
        )
    return path
