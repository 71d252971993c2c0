"""One writer per experiment: `mmsa search` and `mmsa resume` hold a lease on the experiment directory.

Two drivers on one experiment (a second terminal, a re-submitted cluster job) would both start trials, train
configurations twice and leave trials stuck PENDING. The lease is a small JSON file in the experiment directory
(host, pid, command, start, heartbeat), rewritten every HEARTBEAT_S seconds while its holder lives; it works the same
on a local disk, NFS and object storage (written whole through data_pipeline/atomic.py). Only its holder writes it:
Ray never stages or uploads it (search/experiment/ray_internals.py keep_our_files_out_of_ray_staging). A second writer is
refused, naming the holder.

When a lease counts (holder): its heartbeat is a number at most STALE_S old, whatever the pid (a pid may be reused by
an unrelated process, e.g. pid 1 is always alive); on the holder's own host a pid that is not alive frees it at once.
A heartbeat more than CLOCK_SKEW_S in the future is not trusted (no clock is that far off; a lease written so would
block the experiment for ever): it is stale, and `describe` says why. A lease that is not JSON, or whose fields are
not what the holder writes, holds nothing. `--break-lock` takes a lease that still counts, naming its holder, for
the case the user knows better (a holder on another host that is gone but kept beating before).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError
from data_pipeline.printable import term

from search.experiment import faults, storage

LOCK_FILE = ".mmsa-lock.json"
HEARTBEAT_S = 10.0  # how often the holder renews its lease
STALE_S = 60.0  # a lease not renewed for this long belongs to a dead or cut-off process
CLOCK_SKEW_S = STALE_S  # a heartbeat further in the future than this was not written by a holder's clock
SETTLE_S = 0.5  # after writing, read back this much later: of two writers at the same moment one sees the other
BREAK_TRIES = 5  # --break-lock writes again while the broken holder's renewal lands over its write


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # PermissionError: alive, someone else's; OverflowError: not a pid here, decided by heartbeat
    return True


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _pid(lease: dict) -> int | None:
    p = lease.get("pid")
    return p if isinstance(p, int) and not isinstance(p, bool) and p > 0 else None  # 0/-1 would signal a group


def read_lease(exp: str) -> dict | None:
    """The lease (None: there is none; {}: damaged, so nobody holds it)."""
    fs, path = storage.filesystem(exp)
    data = storage.read_bytes(fs, f"{path}/{LOCK_FILE}")
    if data is None:
        return None
    lease = storage.parse_json(data)
    return lease if isinstance(lease, dict) else {}  # damaged (e.g. its writer died mid-write): nobody holds it


def why_stale(lease: dict | None, now: float | None = None) -> str | None:
    """Why a lease holds nothing (None: it counts, its holder may be writing)."""
    if lease is None:
        return "there is no lease"
    beat, pid = _number(lease.get("heartbeat")), _pid(lease)
    if beat is None or pid is None or not isinstance(lease.get("token"), str):
        return "the lease is damaged (not what a holder writes)"
    age = (time.time() if now is None else now) - beat
    if age > STALE_S:
        return f"its last heartbeat is {age:.0f} s old (more than {STALE_S:.0f} s)"
    if age < -CLOCK_SKEW_S:
        return (f"its heartbeat is {-age:.0f} s in the future (more than the {CLOCK_SKEW_S:.0f} s clocks may differ): "
                "not written by a live holder")
    if lease.get("host") == socket.gethostname() and not _alive(pid):
        return f"its process {pid} is not running on this host"
    return None


def holder(lease: dict | None, now: float | None = None) -> dict | None:
    """The lease if a live process holds it, else None."""
    return lease if lease and why_stale(lease, now) is None else None


def describe(lease: dict) -> str:
    beat = _number(lease.get("heartbeat"))
    ago = f"{time.time() - beat:.0f} s ago" if beat is not None else "unknown"
    f = {k: term(str(lease.get(k, "?")))[:200] for k in ("command", "pid", "host", "started")}  # the file's text
    return f"`{f['command']}` (pid {f['pid']} on {f['host']}, since {f['started']}, last heartbeat {ago})"


def running(exp: str) -> str | None:
    """Who holds the experiment's lease now (described), or None: `mmsa status`'s "running now" and export's note."""
    lease = holder(read_lease(exp))
    return describe(lease) if lease else None


def refuse_held(subject: str, lease: dict | None, consequence: str) -> None:
    """THE "experiment in use" refusal: a UserError naming the live holder of a lease (holder()'s answer: None or
    the lease) and what the caller's command would do wrong, with what to do instead."""
    if lease is not None:
        raise UserError(f"{subject} is in use by {describe(lease)}; {consequence}")


def _stop_like_ctrl_c() -> None:
    import signal

    # A real SIGINT to the main thread (as Ctrl-C): it wakes a blocking call there, which _thread.interrupt_main
    # does not; Ray's handler then saves the experiment state and stops the search.
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


class ExperimentLock:
    """on_lost: called (from the heartbeat thread) when another process has taken the lease: this one went longer
    than STALE_S without a heartbeat (suspended, cut off from the storage) or was broken with --break-lock. By
    default the holder stops as on Ctrl-C, so that the experiment never has two writers."""

    def __init__(self, exp: str, command: str, break_lock: bool = False, on_lost=_stop_like_ctrl_c):
        self.exp, self.command, self.break_lock, self.on_lost = exp, command, break_lock, on_lost
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
            if not self.break_lock:
                refuse_held(self.exp, current, f"one search or resume at a time: wait for it to finish or stop it "
                            f"(Ctrl-C), then run `mmsa resume {self.exp}`. A lease whose process died is taken over by "
                            f"itself (at once on the same host, after {STALE_S:.0f} s without heartbeat anywhere); if "
                            "you know its holder is gone, pass --break-lock.")
            print(f"--break-lock: breaking the lease of {self.exp} held by {describe(current)}", file=sys.stderr)
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S")
        broken = current.get("token") if current is not None else None
        # A holder being broken may have read its own lease just before our write and renew it just after (its
        # read and write are not one step on any storage); its next beat sees our token and stops, so write again.
        for _ in range(BREAK_TRIES if broken else 1):
            try:
                self._write()
            except OSError as e:  # e.g. a folder planted in its place
                raise UserError(f"{path}/{LOCK_FILE}: cannot write the lease that keeps a second writer out ({e}); "
                                "move whatever is there away and run the command again.") from None
            time.sleep(SETTLE_S)
            now = read_lease(self.exp) or {}
            if now.get("token") != broken:
                break
        if now.get("token") != self.token:
            raise UserError(f"{self.exp}: another process took the experiment at the same moment "
                            f"({describe(now) if now else 'unknown'}); only one of them goes on.")
        self._thread = threading.Thread(target=self._beat, name="mmsa-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(faults.heartbeat_s(HEARTBEAT_S)):
            try:
                current = read_lease(self.exp) or {}
                if current.get("token") not in (self.token, None):  # taken over: never write over the new holder
                    print(f"{self.exp}: the experiment was taken over by {describe(current)}; this process stops "
                          "so that only one writes it", file=sys.stderr)
                    self.on_lost()
                    return
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


def wait_out_dead_holder(exp: str, log=print, poll_s: float = 1.0) -> None:
    """For a relaunch of the same command (`mmsa search --if-exists resume` after a head-pod restart or a Slurm
    requeue): the killed driver could not release its lease, and on another host (the new pod) its pid cannot be
    checked, so the lease counts until its heartbeat is STALE_S old. Wait that long at most, saying so, instead of
    refusing. A lease that is renewed meanwhile has a live holder: return at once, and the lease's acquire refuses
    it as always."""
    first = holder(read_lease(exp))
    if first is None:
        return
    beat = _number(first.get("heartbeat"))
    left = max(0.0, STALE_S - (time.time() - beat))
    log(f"{exp}: its lease is held by {describe(first)}; if that driver was killed (a restarted pod or job), its "
        f"lease expires within {left:.0f} s: waiting for that (a holder that renews it meanwhile is alive, and this "
        "launch is refused)")
    deadline = time.time() + left + poll_s
    while time.time() < deadline:
        time.sleep(poll_s)
        now = holder(read_lease(exp))
        if now is None or now.get("token") != first.get("token") or _number(now.get("heartbeat")) != beat:
            return  # expired (free now), or alive (renewed, or taken by another process): acquire decides
