"""One writer per experiment: `mmsa search` and `mmsa resume` hold a lease on the experiment directory.

Two drivers on one experiment (a second terminal, a re-submitted cluster job) would both start trials, train
configurations twice and leave trials stuck PENDING. The lease is a small JSON file in the experiment directory
(host, pid, command, start, heartbeat), rewritten every HEARTBEAT_S seconds while its holder lives; it works the same
on a local disk, NFS and object storage (written whole through data_pipeline/atomic.py). A second writer is refused,
naming the holder. A lease whose process is gone (same host, pid not alive) is taken over at once; one from another
host whose heartbeat is older than STALE_S is taken over too (its holder died or lost the storage).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError

from . import storage

LOCK_FILE = ".mmsa-lock.json"
HEARTBEAT_S = 10.0  # how often the holder renews its lease
STALE_S = 60.0  # a lease not renewed for this long belongs to a dead or cut-off process
SETTLE_S = 0.5  # after writing, read back this much later: of two writers at the same moment one sees the other


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lease(exp: str) -> dict | None:
    fs, path = storage.filesystem(exp)
    data = storage.read_bytes(fs, f"{path}/{LOCK_FILE}")
    if data is None:
        return None
    try:
        lease = json.loads(data)
        return lease if isinstance(lease, dict) else {}
    except ValueError:
        return {}  # cut short: its writer died mid-write, so nobody holds it


def holder(lease: dict | None, now: float | None = None) -> dict | None:
    """The lease if a live process holds it, else None."""
    if not lease or "pid" not in lease:
        return None
    now = time.time() if now is None else now
    if lease.get("host") == socket.gethostname():
        return lease if _alive(int(lease["pid"])) else None
    return lease if now - float(lease.get("heartbeat", 0)) < STALE_S else None


def describe(lease: dict) -> str:
    age = time.time() - float(lease.get("heartbeat", 0))
    return (f"`{lease.get('command', '?')}` (pid {lease.get('pid')} on {lease.get('host')}, since "
            f"{lease.get('started', '?')}, last heartbeat {age:.0f} s ago)")


class ExperimentLock:
    def __init__(self, exp: str, command: str):
        self.exp, self.command = exp, command
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        fs, path = storage.filesystem(self.exp)
        lease = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                 "started": self._started, "heartbeat": time.time()}
        write_file(f"{path}/{LOCK_FILE}", json.dumps(lease).encode(), fs)

    def acquire(self) -> "ExperimentLock":
        fs, path = storage.filesystem(self.exp)
        storage.create_dir(fs, path)
        current = holder(read_lease(self.exp))
        if current is not None and current.get("token") != self.token:
            raise UserError(f"{self.exp} is in use by {describe(current)}. One search or resume at a time: wait for it "
                            f"to finish or stop it (Ctrl-C), then run `mmsa resume {self.exp}`. A lease whose process "
                            f"died is taken over by itself (at once on the same host, after {STALE_S:.0f} s elsewhere).")
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write()
        time.sleep(SETTLE_S)
        now = read_lease(self.exp) or {}
        if now.get("token") != self.token:
            raise UserError(f"{self.exp}: another process took the experiment at the same moment "
                            f"({describe(now) if now else 'unknown'}); only one of them goes on.")
        self._thread = threading.Thread(target=self._beat, name="mmsa-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (read_lease(self.exp) or {}).get("token") not in (self.token, None):
                    return  # taken over (we were cut off for longer than STALE_S): never write over the new holder
                self._write()
            except OSError:
                pass  # storage briefly unreachable: the next beat retries; STALE_S allows several misses

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (read_lease(self.exp) or {}).get("token") == self.token:
                fs, path = storage.filesystem(self.exp)
                fs.delete_file(f"{path}/{LOCK_FILE}")
        except OSError:
            pass

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
