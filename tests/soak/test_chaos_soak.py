"""A minute of the chaos soak at deployment shape, on every change.

`bench/chaos.py` as a real subprocess: two `verimail-api` replicas, three `verimail-worker`s, a
master with a replica and three Sentinels, PostgreSQL and an SMTP server, for 60 s and on until
every kind of fault has struck, one at a time (the ten-minute run lets them overlap;
docs/reliability.md says what that still finds). The suite fails on any email missing, doubled
or phantom, or work that did not drain; the soak's own report (every anomaly with its job id,
attempts and the faults around it) is printed with the failure. The ten-minute run is
`make chaos`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 60
FAULT_KINDS = {
    "kill_worker",
    "stop_worker",
    "crash_redis",
    "lose_redis_writes",
    "restart_postgres",
    "restart_postgres_mid_send",
    "refuse_smtp",
    "unanswered_data",
    "pause_worker_mid_send",
    "pause_api",
}


@pytest.mark.timeout(900)
def test_every_fault_at_deployment_shape_loses_doubles_and_invents_no_email(
    tmp_path: Path,
) -> None:
    result_file = tmp_path / "chaos.json"
    argv = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--mode", "outbox",
        "--duration", str(SECONDS),
        "--rate", "5",
        "--api-replicas", "2",
        "--workers", "3",
        "--sentinel",
        "--fault-interval", "1", "2",
        "--one-at-a-time",
        "--every-kind",
        "--json", str(result_file),
        "--keep", str(tmp_path / "run"),
    ]  # fmt: skip
    run = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result_file.exists(), f"the soak did not finish:\n{run.stdout}\n{run.stderr[-4000:]}"
    result = json.loads(result_file.read_text())
    print(run.stdout)
    assert set(result["faults"]) == FAULT_KINDS, "some kind of fault never struck"
    counts = {key: result[key] for key in ("missing", "duplicates", "phantom")}
    assert counts == {"missing": 0, "duplicates": 0, "phantom": 0}, run.stdout
    assert result["drained"], run.stdout
    assert result["first_links_failing"] == 0, run.stdout
    assert result["signups_accepted"] > 0
    assert run.returncode == 0, run.stderr[-4000:]
