"""Stage locks on a real file system: flock on this kernel, leases across kernels, races."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llm_recipe.runtime import locks
from llm_recipe.runtime.locks import LOCK_DIR, StageLock, StageLockedError, boot_id

OTHER_BOOT = "0f0f0f0f-other-kernel"


def write_lease(stage: Path, name: str = "4242-abc.lease", *, boot: str = OTHER_BOOT,
                age: float = 0.0, lease_s: float = 120.0, text: str | None = None) -> Path:
    """A lease nobody holds a flock on, as a dead holder (or another kernel's) leaves it."""
    folder = stage / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if text is None:
        text = json.dumps({"pid": 4242, "host": "node-7", "boot_id": boot, "flock": True,
                           "started": "2026-01-01T00:00:00+00:00", "lease_s": lease_s})
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def leases(stage: Path) -> list[str]:
    return sorted(p.name for p in (stage / LOCK_DIR).iterdir())


def start_holder(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


HOLDER = """
import sys, time
from pathlib import Path
from llm_recipe.runtime.locks import StageLock
StageLock(Path(sys.argv[1])).acquire()
print("ready", flush=True)
time.sleep(60)
"""

# A container on this machine: pid 1, its own host name, the host's boot id.
CONTAINER = """
import fcntl, json, os, sys, time
folder = os.path.join(sys.argv[1], ".locks")
os.makedirs(folder, exist_ok=True)
fd = os.open(os.path.join(folder, "1-container.lease"), os.O_CREAT | os.O_EXCL | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": 1, "host": "container-1", "boot_id": sys.argv[2],
                         "started": "2026-02-02T00:00:00+00:00", "lease_s": 120,
                         "flock": True}).encode())
print("ready", flush=True)
time.sleep(60)
"""


def test_a_live_holder_on_this_machine_is_named(tmp_path):
    holder = start_holder(HOLDER, str(tmp_path))
    try:
        with pytest.raises(StageLockedError) as caught:
            StageLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert f"since {datetime.now(UTC).year}-" in message
        assert StageLock(tmp_path).holder()["pid"] == holder.pid
        assert len(leases(tmp_path)) == 1  # the refused claimant removed its own lease
    finally:
        kill(holder)
    # Killed with SIGKILL: the kernel dropped its flock, the lease is taken over at once.
    with StageLock(tmp_path) as lock:
        assert lock.holder()["pid"] == os.getpid()
        assert leases(tmp_path) == [lock.path.name]


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with StageLock(tmp_path), pytest.raises(StageLockedError) as caught:
        StageLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(caught.value)
    assert leases(tmp_path) == []


def test_a_dead_container_pid_1_on_this_kernel_is_taken_over_at_once(tmp_path):
    holder = start_holder(CONTAINER, str(tmp_path), boot_id())
    try:
        with pytest.raises(StageLockedError) as caught:
            StageLock(tmp_path).acquire()
        assert "pid 1 on container-1, since 2026-02-02" in str(caught.value)
    finally:
        kill(holder)
    with StageLock(tmp_path) as lock:
        assert leases(tmp_path) == [lock.path.name]


def test_another_kernel_is_judged_by_its_heartbeat(tmp_path):
    lease = write_lease(tmp_path, age=5)
    with pytest.raises(StageLockedError) as caught:
        StageLock(tmp_path).acquire()
    assert "pid 4242 on node-7, since 2026-01-01T00:00:00" in str(caught.value)
    assert lease.name in caught.value.hint
    os.utime(lease, (time.time() - 121, time.time() - 121))
    with StageLock(tmp_path) as lock:
        assert not lease.exists()
        assert lock.holder()["pid"] == os.getpid()


def test_the_holders_lease_length_is_used(tmp_path):
    write_lease(tmp_path, age=200, lease_s=600)
    with pytest.raises(StageLockedError):
        StageLock(tmp_path).acquire()
    write_lease(tmp_path, age=10, lease_s=5)
    with StageLock(tmp_path) as lock:
        assert leases(tmp_path) == [lock.path.name]


def test_a_torn_lease_is_judged_by_its_mtime(tmp_path):
    write_lease(tmp_path, "1-torn.lease", text="", age=1)
    with pytest.raises(StageLockedError):
        StageLock(tmp_path).acquire()
    write_lease(tmp_path, "1-torn.lease", text='{"pid": 7, "bo', age=1000)
    with StageLock(tmp_path) as lock:
        assert leases(tmp_path) == [lock.path.name]


def test_release_removes_the_lease_and_the_heartbeat_advances(tmp_path):
    lock = StageLock(tmp_path, lease_s=1, heartbeat_s=0.05)
    with lock:
        os.utime(lock.path, (1000, 1000))
        time.sleep(0.3)
        assert time.time() - lock.path.stat().st_mtime < 1
        record = json.loads(lock.path.read_text())
        assert record["boot_id"] == boot_id() and record["lease_s"] == 1
        assert not lock.lost.is_set()
    assert leases(tmp_path) == []
    assert lock.holder() is None


def test_a_lost_lease_is_noticed_by_the_heartbeat(tmp_path):
    with StageLock(tmp_path, lease_s=1, heartbeat_s=0.02) as lock:
        lock.path.unlink()  # someone judged it dead (e.g. this host was paused)
        assert lock.lost.wait(2)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    with StageLock(tmp_path) as lock:
        child = os.fork()
        if child == 0:  # a dataloader worker: its copy of the fd is closed
            os._exit(0 if not locks._HELD and not locks._HELD_FDS else 1)
        assert os.waitpid(child, 0)[1] == 0
        assert lock.path.exists()
    assert leases(tmp_path) == []


# ---------------------------------------------------------------- races

TRIALS = 300


def _race(index, root, where, trials, barrier, guard, inside, overlaps, holders):
    if where == "hosts":
        # Each worker plays another host whose flock is not coherent with the others'
        # (Lustre -o localflock): leases are judged by their heartbeat alone.
        locks.boot_id = lambda: f"kernel-{index}"
        locks._flock = lambda fd: None
    for trial in range(trials):
        stage = Path(root) / str(trial)
        if index == 0:
            if where == "local":  # left by a dead process on this kernel: fresh, no flock
                write_lease(stage, "999999-dead.lease", boot=boot_id())
            else:  # left by a dead host: expired heartbeat
                write_lease(stage, "999999-dead.lease", age=1000)
        barrier.wait()
        if index < 2 + trial % 3:
            try:
                with StageLock(stage):
                    with guard:
                        inside.value += 1
                        if inside.value > 1:
                            overlaps.value += 1
                        holders[trial] += 1
                    time.sleep(0.002)
                    with guard:
                        inside.value -= 1
            except StageLockedError:
                pass
        barrier.wait()


@pytest.mark.parametrize("where", ["local", "hosts"])
def test_racing_takeovers_never_give_two_holders(tmp_path, where):
    """2-4 claimants released together by a barrier take over a dead lease, 300 times."""
    ctx = multiprocessing.get_context("fork")
    barrier, guard = ctx.Barrier(4, timeout=60), ctx.Lock()
    inside, overlaps = ctx.Value("i", 0, lock=False), ctx.Value("i", 0, lock=False)
    holders = ctx.Array("i", TRIALS, lock=False)
    workers = [ctx.Process(target=_race, args=(i, str(tmp_path), where, TRIALS, barrier, guard,
                                               inside, overlaps, holders))
               for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * 4
    held = sum(1 for n in holders if n)
    print(f"{where}: {TRIALS} trials, {overlaps.value} overlaps, a holder in {held}, "
          f"{sum(holders)} holds")
    assert overlaps.value == 0
    assert held >= 0.9 * TRIALS
    assert all(leases(tmp_path / str(t)) == [] for t in range(TRIALS))
