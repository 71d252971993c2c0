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


def check_before_ray(spec, storage_dir: str, *, mlflow: str | None = None, what: str | None = None,
                     fix: str = "choose another directory with --storage") -> str:
    """Refuse now what would fail every trial, or the search mid-way, with one message each: a bad state-signing
    key (search/experiment/state_trust.py), a missing or unfitting backbone (spec.fixed.model), local storage that cannot be
    written or is full (`what` names it in the message, `fix` says what to do). Returns the storage as an absolute
    path (a URI unchanged). mlflow: --mlflow's value (None: not asked for), refused when MLflow is not installed."""
    if mlflow is not None:
        from search.experiment.mlflow_runs import require_mlflow

        require_mlflow()
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


# ---- one search or two: `mmsa search --if-exists resume` (search/tune/relaunch.py) ------------------------------------
# What makes two launches the same search: what `mmsa search` records in the experiment's metadata from its arguments
# (search/tune/tuner.py run_search). Everything else it records is decided by the cluster it happens to run on
# (resources, max_concurrent, storage as an absolute path, shared_storage: `mmsa resume` accepts new values of these
# too), or is a moment (created); --verbose, --address and --break-lock are never recorded.
IDENTITY = ("num_samples", "data_dir", "data_fingerprint", "optuna_storage", "warm_start", "spec")
# Recorded, yet not what makes it another search: a time budget may be raised between runs (`mmsa resume
# --time-budget`), and a relaunch applies its own (search/tune/relaunch.py).
NOT_COMPARED = ("spec.search.time_budget",)


def _flat(value, prefix: str) -> dict:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def _as_stored(value):
    """A value as META stores it (YAML: tuples become lists), so that a fresh value compares with a stored one."""
    import yaml

    return yaml.safe_load(yaml.safe_dump(value, sort_keys=False))


def _identity(meta: dict, key: str):
    """warm_start: the source experiments only (what the search records of each depends on their trials now).
    spec: as `mmsa resume` would run it (parsed, so a key added to the configs since the search was made counts
    with its default, as resume gives it)."""
    v = _as_stored(meta.get(key))
    if key == "warm_start" and isinstance(v, list):
        return [e.get("experiment") if isinstance(e, dict) else e for e in v] or None
    if key == "spec" and isinstance(v, dict) and "fixed" in v:
        from search.settings.space import parse_spec, spec_to_dict

        return spec_to_dict(parse_spec(v, "the search's metadata"))
    return v


def search_differences(stored: dict, new: dict) -> list[tuple[str, object, object]]:
    """THE rule for "the same search": every IDENTITY key (nested ones as dotted paths, e.g. spec.fixed.train.lr)
    whose stored value differs from the new one, as (key, stored value, new value), sorted by key; [] when they are
    the same search. `new` holds the IDENTITY keys of the launch, as run_search would record them."""
    a, b = ({k: v for key in IDENTITY for k, v in _flat(_as_stored(_identity(meta, key)), key).items()}
            for meta in (stored, new))
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in NOT_COMPARED and a.get(k, missing) != b.get(k, missing)]
