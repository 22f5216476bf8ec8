"""Debian binaries the deploy tests run for real; a missing one fails the test with the fix."""

from __future__ import annotations

import shutil

import pytest

# Debian package that provides each binary; `make tools` (a step of `make test`) installs them.
PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
}
# Not in Debian: kubectl (its `kubectl kustomize`) comes with the development machine's image.
ELSEWHERE = {"kubectl": "install kubectl (Kubernetes' own apt repository or release binary)"}


def require(binary: str) -> str:
    """The binary's path, or a failure that says how to install it (never a silent skip)."""
    path = shutil.which(binary)
    if path is None and binary in ELSEWHERE:
        pytest.fail(f"{binary} is not installed: {ELSEWHERE[binary]}", pytrace=False)
    if path is None:
        package = PACKAGES.get(binary, binary)
        pytest.fail(
            f"{binary} is not installed: run `make tools` "
            f"(apt-get install -y --no-install-recommends {package})",
            pytrace=False,
        )
    return path
