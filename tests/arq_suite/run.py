"""Run arq's own test suite with the weighted worker in place of arq's Worker.

    uv run python tests/arq_suite/run.py [pytest options]

Downloads arq's source distribution at the installed (pinned) version from the package index
into `.cache/arq-sdist/` (once; never part of the repository), takes its `tests/`, puts
`arq_conftest.py` in place of its conftest (a throwaway Redis instead of a container, and
`WeightedWorker` wherever arq's tests build a `Worker`), and runs them. The tests that check
arq behaviour the weighted worker changes on purpose are deselected, each with its reason
(`DIFFERENCES`, documented in docs/decisions/041).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "arq-sdist"
HERE = Path(__file__).resolve().parent

# Test id -> why the weighted worker behaves otherwise, on purpose.
DIFFERENCES: dict[str, str] = {}


def fetch(version: str) -> Path:
    """arq's sdist for `version`, unpacked (tests and pytest settings only) under the cache."""
    sdist = CACHE / f"arq-{version}.tar.gz"
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-cache-dir",
                "--no-deps",
                "--no-binary=:all:",
                f"arq=={version}",
                "--dest",
                str(CACHE),
            ],
            check=True,
        )
    tree = CACHE / f"arq-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    prefix = f"arq-{version}/tests/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.isfile()]
        archive.extractall(CACHE, members=members, filter="data")
    shutil.copyfile(HERE / "arq_conftest.py", tree / "tests" / "conftest.py")
    return tree


def main() -> int:
    version = importlib.metadata.version("arq")
    tree = fetch(version)
    deselect = [f"--deselect=tests/{test}" for test in DIFFERENCES]
    for test, why in DIFFERENCES.items():
        print(f"deselected on purpose: {test}: {why}")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(HERE / "pytest.ini"),
        "--rootdir",
        str(tree),
        "-p",
        "no:cacheprovider",
        *deselect,
        *sys.argv[1:],
        "tests",
    ]
    return subprocess.run(command, cwd=tree, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
