"""One live process per shard: a second one stops at once, a dead one's lease is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.common.lease import Lease, LeaseHeld
from components.common.store import open_store
from pipelines.demo_teacher import write_demo_dataset
from tests.teacher.conftest import run_teacher_cli, start_teacher_cli, teacher_settings, wait_until
from tests.teacher.faulty_teacher import Faults, start_faulty_teacher

REPO = Path(__file__).resolve().parents[2]
KEY = "leases/shard-00000-of-00001.json"
HOLD = """
import sys, time
from components.common.lease import Lease
from components.common.store import open_store
lease = Lease(open_store(sys.argv[1]), sys.argv[2], "shard 0/1", ttl_s=2.0, renew_s=0.5)
with lease.held():
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


def hold(store_uri: str, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, store_uri, KEY, str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n", process.stderr.read()
    return process


def test_a_second_process_stops_at_once_while_the_first_renews_its_lease(store_uri):
    first = hold(store_uri, 60)
    try:
        taken = json.loads(open_store(store_uri).read_text(KEY))
        time.sleep(3.0)  # longer than ttl_s: only renewals keep the lease alive
        renewed = json.loads(open_store(store_uri).read_text(KEY))
        assert renewed["expires_at"] > taken["expires_at"] + 2.0
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-c", HOLD, store_uri, KEY, "0"], cwd=REPO, capture_output=True, text=True
        )
        assert second.returncode != 0 and "held" not in second.stdout
        assert f"shard 0/1 is already running in {os.uname().nodename} (pid {first.pid})" in second.stderr
        assert "give this run another run_id" in second.stderr
        assert time.monotonic() - started < 30, "stopped at once, not after waiting for the lease"
    finally:
        first.kill()
        first.wait()


def test_the_lease_of_a_process_killed_with_sigkill_is_taken_over(store_uri):
    first = hold(store_uri, 60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    # Same host, pid gone: the lease is taken over without waiting for it to expire.
    second = hold(store_uri, 0)
    assert second.stdout.readline() == "released\n"
    assert second.wait() == 0
    assert not open_store(store_uri).exists(KEY), "a finished holder releases its lease"


def plant(store_uri: str, host: str, expires_in: float) -> None:
    body = {"token": "other", "owner": {"host": host, "pid": 1}, "expires_at": time.time() + expires_in}
    open_store(store_uri).write_text(KEY, json.dumps(body))


def test_a_pod_elsewhere_is_waited_for_until_its_lease_expires(store_uri):
    plant(store_uri, "teacher-pod-on-another-node", expires_in=30)
    with pytest.raises(LeaseHeld, match="already running in teacher-pod-on-another-node"):
        Lease(open_store(store_uri), KEY, "shard 0/1").acquire()
    plant(store_uri, "teacher-pod-on-another-node", expires_in=-1)  # the pod died a while ago
    with Lease(open_store(store_uri), KEY, "shard 0/1").held():
        assert json.loads(open_store(store_uri).read_text(KEY))["owner"]["pid"] == os.getpid()


def test_a_holder_whose_lease_was_taken_over_is_told_to_stop(store_uri):
    lost = threading.Event()
    lease = Lease(open_store(store_uri), KEY, "shard 0/1", ttl_s=1.0, renew_s=0.2, on_lost=lost.set)
    lease.acquire()
    try:
        plant(store_uri, "another-pod", expires_in=30)  # as if this process had stalled past its expiry
        assert lost.wait(10), "the renewer noticed that the lease is no longer its own"
        assert lease.lost
    finally:
        lease.release()
    assert json.loads(open_store(store_uri).read_text(KEY))["token"] == "other", "not deleted: not ours"


def test_a_second_teacher_stage_with_the_same_run_id_sends_nothing(tmp_path, store_uri):
    write_demo_dataset(tmp_path / "prompts.jsonl", 40, seed=5)
    with start_faulty_teacher(faults=Faults(stall_after=10)) as server:
        settings = teacher_settings(
            tmp_path, server.base_url, store_uri=store_uri, run_id="twice", concurrency=4
        )
        first = start_teacher_cli(tmp_path, settings)
        try:
            # The first stage is mid-run, holding its lease.
            wait_until(lambda: server.held >= 4, "the first stage never got requests in flight", first)
            asked = sum(server.requests_by_prompt.values())
            second = run_teacher_cli(tmp_path, settings)
            assert second.returncode != 0
            error = second.stderr.strip().splitlines()[-1]
            assert error.startswith("error: teacher shard 0/1 of run 'twice' is already running in ")
            assert sum(server.requests_by_prompt.values()) == asked, "the second stage asked nothing"
        finally:
            first.kill()
            first.wait()
            server.release()
