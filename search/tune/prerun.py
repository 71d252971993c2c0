"""What every command that runs trials checks before Ray starts, and how it starts Ray: written once, for `mmsa
search`, `refine` and `confirm` (through search/tune/tuner.py run_search) and `mmsa resume` (resume_search), which used
to skip three of these checks (backbones present, storage writable, storage reachable from every node)."""
from __future__ import annotations

import os
import signal
import threading

from model.backbones import check_backbones

from search.tune import ray_cluster

from search.experiment import state_trust, storage


def check_before_ray(spec, storage_dir: str, *, what: str | None = None,
                     fix: str = "choose another directory with --storage") -> str:
    """Refuse now what would fail every trial, or the search mid-way, with one message each: a bad state-signing
    key (search/experiment/state_trust.py), a missing or unfitting backbone (spec.fixed.model), local storage that cannot be
    written or is full (`what` names it in the message, `fix` says what to do). Returns the storage as an absolute
    path (a URI unchanged)."""
    state_trust.check_key()  # a bad key is refused now, not at the first state save in the middle of the search
    check_backbones(spec.fixed.model)  # every trial would fail on a missing weights file: say so now
    return storage.check_local_storage(storage_dir, what=what, fix=fix)


def start_ray(address: str | None, storage_dir: str, shared_storage: bool) -> None:
    """Join or start Ray, make SIGTERM stop the run as Ctrl-C does, and refuse a node-local storage path on a
    cluster whose other nodes could not write to it."""
    ray_cluster.init_ray(address)
    sigterm_like_ctrl_c()
    ray_cluster.check_cluster_storage(storage_dir, shared_storage)


def sigterm_like_ctrl_c() -> None:
    """SIGTERM (Slurm, Kubernetes, `timeout`) stops the search the way Ctrl-C does: Ray Tune saves its state and
    returns, and the CLI prints the resume command. Ray's driver installs a SIGTERM handler of its own in ray.init,
    so this runs after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
