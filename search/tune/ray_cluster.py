"""The Ray side of a search before any trial runs: starting or joining Ray, checking that every node runs the
same versions, that storage is reachable from every node, and how many trials fit at once."""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from data_pipeline.errors import UserError

from search.settings.space import SearchSpec
from search.experiment.storage import is_uri

SHARED_FS = ("nfs", "nfs4", "cifs", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "9p", "virtiofs")
# Must be the same on the driver and on every node: Ray requires it of ray and Python, and trials on nodes with
# another torch/transformers would not train the same model.
SAME_EVERYWHERE = ("python", "ray", "optuna", "torch", "transformers", "mmsa-tune")


# Ray's own settings (src/ray/common/ray_config_def.h) for the local instance a search starts. Every Ray process
# exports metrics for Prometheus and the dashboard, which a local search never reads; that exporter's thread
# (opencensus DeltaProducer::RunHarvesterLoop) was seen to crash a worker with a segmentation fault on a loaded
# 2-core machine. A cluster joined with --address keeps its own settings (set when it was started: docs/cluster.md).
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False}


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Short demo epochs make Ray warn that keeping the best N checkpoints forces frequent state snapshots.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's classic output engine: a concise status table (our columns) instead of a box per trial start and result.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot the experiment state at every step (Ray's default waits up to minutes): after a crash, resume then
    # knows every checkpoint that was written. Cheap next to epochs of seconds to minutes.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    kwargs = {"logging_level": logging.WARNING, "configure_logging": True}
    if address in (None, "", "local"):
        # A fresh local instance; a bare ray.init() would attach to any stale cluster recorded on this machine.
        # The dashboard stays off (and would bind 127.0.0.1 only).
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 _system_config=dict(LOCAL_SYSTEM_CONFIG), **kwargs)  # a copy: Ray adds its session's paths to it
        return
    try:
        ray.init(address=address, **kwargs)
    except RuntimeError as e:
        if "version mismatch" in str(e).lower():
            raise UserError(f"--address {address}: the cluster runs another Ray or Python version than this machine "
                            f"({' '.join(str(e).split())}). Every node and the driver must run the same versions: check "
                            "with `ray --version` and `python --version` on each node.") from None
        raise
    check_cluster_versions(address)


def local_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for pkg in SAME_EVERYWHERE[1:]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def node_versions() -> dict[str, dict[str, str]]:
    """"IP (node id)" -> versions of the Python environment that runs trials there (a zero-CPU task pinned to each
    node; the id tells apart nodes that share an address, e.g. several on one machine)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(local_versions)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    return {f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})": v for n, v in zip(nodes, ray.get(refs, timeout=120))}


def version_mismatches(driver: dict[str, str], nodes: dict[str, dict[str, str]]) -> list[str]:
    return [f"node {node}: {pkg} {v.get(pkg)} (this machine: {driver[pkg]})"
            for node, v in sorted(nodes.items()) for pkg in SAME_EVERYWHERE if v.get(pkg) != driver[pkg]]


def check_cluster_versions(address: str) -> None:
    bad = version_mismatches(local_versions(), node_versions())
    if bad:
        raise UserError(f"--address {address}: the cluster's nodes do not run the versions this machine runs: "
                        + "; ".join(bad) + ". Install the same versions everywhere (README: Versions; check with "
                        "`ray --version` and `pip show mmsa-tune torch transformers optuna` on each node).")


def _fs_type(path: Path) -> str:
    best, fstype = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, typ, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, typ
    except OSError:
        pass
    return fstype


def check_cluster_storage(storage: str, shared: bool) -> None:
    """Refuse a node-local path on a multi-node cluster: trials elsewhere could not save there."""
    import ray

    if is_uri(storage):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not shared and _fs_type(Path(storage)) not in SHARED_FS:
        raise UserError(
            f"the cluster has {len(nodes)} nodes but --storage {storage} is a local path "
            f"({_fs_type(Path(storage)) or 'unknown'} filesystem): trials on other nodes could not save results there. "
            "Pass shared storage: --storage s3://bucket/ray_results, gs://..., or an NFS path mounted on every node "
            "(add --shared-storage if it is shared but not detected as such)."
        )


# Ray's names of the resources a trial may reserve, and how a message shows each amount.
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}
SHOW = {"cpu": lambda v: f"{v:g} CPU{'' if v == 1 else 's'}", "gpu": lambda v: f"{v:g} GPU{'' if v == 1 else 's'}",
        "memory": lambda v: f"{v / 2**30:.1f} GiB memory"}
FLAGS = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial", "memory": "--memory-per-trial"}


def trial_resources(spec: SearchSpec) -> dict:
    """What one trial reserves (Ray's with_resources keys): GPUs -1 means one when the cluster has any."""
    import ray

    s = spec.search
    gpus = s.gpus_per_trial if s.gpus_per_trial >= 0 else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
    out = {"cpu": s.cpus_per_trial, "gpu": gpus}
    if s.memory_per_trial > 0:  # Ray counts memory in bytes
        out["memory"] = int(s.memory_per_trial * 2**30)
    return out


def _node_has(node: dict) -> dict:
    have = node.get("Resources") or {}
    return {k: float(have.get(name, 0) or 0) for k, name in RAY_NAMES.items()}


def _trials_on(node: dict, resources: dict) -> int:
    have = _node_has(node)
    return min((math.floor(have[k] / v + 1e-9) for k, v in resources.items() if v > 0), default=10**9)


def check_fits(resources: dict, where: str = "") -> None:
    """Refuse, before any trial starts, a trial that no node of the cluster could ever hold: Ray would keep it
    pending forever. Ray places a trial's resources on one node, so each node is compared, not their sum."""
    import ray

    bad = [k for k, v in resources.items() if k not in RAY_NAMES or isinstance(v, bool)
           or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0] if isinstance(resources, dict) else [0]
    if bad:
        raise UserError(f"{where or 'the search'}: per-trial resources {resources!r} are not amounts of "
                        f"{', '.join(RAY_NAMES)}; the experiment's metadata is damaged.")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if any(_trials_on(n, resources) >= 1 for n in nodes):
        return
    need = ", ".join(SHOW[k](v) for k, v in resources.items() if v > 0)
    short = [k for k, v in resources.items() if v > 0 and not any(_node_has(n)[k] + 1e-9 >= v for n in nodes)]
    largest = "; ".join(f"node {n.get('NodeManagerAddress', '?')}: " + ", ".join(SHOW[k](_node_has(n)[k]) for k in RAY_NAMES)
                        for n in nodes[:8]) or "no node is alive"
    flags = " / ".join(FLAGS[k] for k in short or [k for k, v in resources.items() if v > 0])
    raise UserError(f"{where + ': ' if where else ''}each trial needs {need} on one node, and no node of this Ray "
                    f"cluster has that much ({largest}); its trials would wait forever. Lower {flags} (search: "
                    "section of the space file), or run on a cluster with a larger node.")


def capacity(spec: SearchSpec) -> tuple[dict, int]:
    """Per-trial resources and how many trials run at once on this cluster (per node: a trial is not split)."""
    import ray

    resources = trial_resources(spec)
    check_fits(resources)
    fits = max(1, sum(_trials_on(n, resources) for n in ray.nodes() if n.get("Alive")))
    s = spec.search
    return resources, (min(s.max_concurrent, fits) if s.max_concurrent else fits)
