"""The arq internals the weighted worker relies on are where it expects them.

`verimail_worker.lifecycle` and `weighted` copy the rules of arq's `main`, `start_jobs`,
`run_job`, `finish_job`, `finish_failed_job` and `close` (into Python and into the Lua
scripts) and use private attributes of arq's Worker. A new arq release that changes any of
them fails here, naming what moved: read the change, port it, then update the digests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from typing import Any

import arq.connections
import arq.constants
import arq.jobs
import arq.utils
import arq.worker
import pytest
from arq.worker import Worker, func

from verimail_worker.lifecycle import ARQ_INTERNALS

TESTED_ARQ_VERSIONS = {"0.28.0"}

# sha256 (first 16 hex digits) of the source of each arq method whose rules are copied.
COPIED_METHODS = {
    "main": "45ca1591c9717466",
    "_poll_iteration": "f8d39d823a0a59f2",
    "start_jobs": "b45797cfa40bed7f",
    "run_job": "589a19059ff84ee7",
    "finish_job": "903f09c92830d3fd",
    "finish_failed_job": "3e16087f318a7acf",
    "close": "5bcc9cb356680829",
    "_jobs_started": "c5643370c110c7cd",
    "_cancel_aborted_jobs": "54575eaf8682f95b",
}

ARQ_CONSTANTS = {
    "in_progress_key_prefix": "arq:in-progress:",
    "job_key_prefix": "arq:job:",
    "retry_key_prefix": "arq:retry:",
    "result_key_prefix": "arq:result:",
    "abort_jobs_ss": "arq:abort",
    "keep_cronjob_progress": 60,
}


async def _noop(ctx: dict[str, Any]) -> None:
    return None


def test_arq_is_a_version_the_weighted_worker_was_tested_with() -> None:
    assert importlib.metadata.version("arq") in TESTED_ARQ_VERSIONS


@pytest.mark.parametrize("method", sorted(COPIED_METHODS))
def test_the_arq_methods_whose_rules_are_copied_are_unchanged(method: str) -> None:
    source = inspect.getsource(getattr(Worker, method))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == COPIED_METHODS[method], f"arq's Worker.{method} changed: port the change"


def test_the_worker_attributes_relied_on_exist() -> None:
    worker = Worker(functions=[func(_noop, name="noop")], handle_signals=False)
    for internal in ARQ_INTERNALS:
        owner, _, name = internal.partition(".")
        if owner == "Worker":
            assert hasattr(worker, name), f"arq's Worker has no {name} any more"


def test_the_module_names_relied_on_exist() -> None:
    modules = {"arq.worker": arq.worker, "arq.jobs": arq.jobs, "arq.constants": arq.constants}
    for internal in ARQ_INTERNALS:
        module, _, name = internal.rpartition(".")
        if module in modules:
            assert hasattr(modules[module], name), f"{internal} is gone"
    for name, value in ARQ_CONSTANTS.items():
        assert getattr(arq.constants, name) == value, f"arq.constants.{name} changed"


def test_the_job_and_result_encodings_are_arqs() -> None:
    assert list(inspect.signature(arq.jobs.serialize_result).parameters) == [
        "function", "args", "kwargs", "job_try", "enqueue_time_ms", "success", "result",
        "start_ms", "finished_ms", "ref", "queue_name", "job_id", "serializer",
    ]  # fmt: skip
    raw = arq.jobs.serialize_job("f", (1,), {"k": 2}, 3, 4)
    assert arq.jobs.deserialize_job_raw(raw) == ("f", (1,), {"k": 2}, 3, 4)


def test_the_enqueue_rules_the_enqueue_script_copies_are_unchanged() -> None:
    # verimail_shared's enqueue_job.lua does what ArqRedis.enqueue_job does (decision 052).
    source = inspect.getsource(arq.connections.ArqRedis.enqueue_job)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == "7da8706a747c1171", "arq's ArqRedis.enqueue_job changed: port the change"
    assert arq.constants.expires_extra_ms == 86_400_000
    assert arq.utils.to_ms(1.2345) == 1234  # rounded to the millisecond
