"""Launching and resuming a search: Ray Tune + Optuna (TPE) + ASHA, one GPU per trial when there are GPUs."""
from __future__ import annotations

import datetime
import logging
import math
import os
import shutil
from pathlib import Path

import yaml

from data_pipeline.dataset import check_data_dir
from data_pipeline.errors import UserError
from data_pipeline.preprocess import data_fingerprint
from model import metrics as M
from model.backbones import check_backbones
from model.run import load_train_val
from model.train import Split

from .space import SearchSpec, parse_spec, spec_to_dict
from .trainable import train_trial

META = "mmsa_search.yaml"  # written into the experiment directory: what `resume`, `status` and `export` read
SHARED_FS = ("nfs", "nfs4", "cifs", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs", "9p", "virtiofs")


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
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)
    else:
        ray.init(address=address, **kwargs)


def _is_uri(storage: str) -> bool:
    return "://" in storage


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


MIN_FREE_BYTES = 100 * 2**20  # below this a search cannot even write its first checkpoints


def check_local_storage(storage: str) -> str:
    """Absolute path; fails before any trial starts when it cannot be written or its disk is full."""
    if _is_uri(storage):
        return storage
    path = Path(storage).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mmsa-write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"--storage {storage}: not writable ({e.strerror or e}). Free some space or choose another "
                        "directory with --storage.") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"--storage {storage}: only {free / 2**20:.1f} MiB free; checkpoints need more. Free some space "
                        "or choose another directory with --storage.")
    return str(path)


def check_cluster_storage(storage: str, shared: bool) -> None:
    """Refuse a node-local path on a multi-node cluster: trials elsewhere could not save there."""
    import ray

    if _is_uri(storage):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not shared and _fs_type(Path(storage)) not in SHARED_FS:
        raise UserError(
            f"the cluster has {len(nodes)} nodes but --storage {storage} is a local path "
            f"({_fs_type(Path(storage)) or 'unknown'} filesystem): trials on other nodes could not save results there. "
            "Pass shared storage: --storage s3://bucket/ray_results, gs://..., or an NFS path mounted on every node "
            "(add --shared-storage if it is shared but not detected as such)."
        )


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def capacity(spec: SearchSpec) -> tuple[dict, int]:
    """Per-trial resources and how many trials run at once on this cluster."""
    import ray

    total = ray.cluster_resources()
    s = spec.search
    gpus = s.gpus_per_trial if s.gpus_per_trial >= 0 else (1.0 if total.get("GPU", 0) > 0 else 0.0)
    if gpus > 0 and total.get("GPU", 0) < gpus:
        raise UserError(f"--gpus-per-trial {gpus}: the cluster has {total.get('GPU', 0):g} GPUs.")
    fit_gpu = math.floor(total.get("GPU", 0) / gpus + 1e-9) if gpus > 0 else 10**9
    fit_cpu = math.floor(total.get("CPU", 1) / s.cpus_per_trial + 1e-9)
    fits = max(1, min(fit_gpu, fit_cpu))
    return {"cpu": s.cpus_per_trial, "gpu": gpus}, (min(s.max_concurrent, fits) if s.max_concurrent else fits)


def make_sampler(seed: int, num_samples: int):
    """TPE tuned for small budgets and parallel trials: Optuna's default spends its first 10 trials at random,
    which is most of a 12-40 trial search; multivariate TPE models lr x batch size jointly; the constant liar keeps
    trials that run at the same time from being proposed the same region."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, num_samples // 4)),
                                      multivariate=True, constant_liar=True)


def make_searcher(spec: SearchSpec, name: str, max_concurrent: int, optuna_storage: str | None, num_samples: int):
    from ray.tune.search import ConcurrencyLimiter

    from .truthful_optuna import TruthfulOptunaSearch

    storage = None
    if optuna_storage:
        import optuna

        storage = optuna.storages.RDBStorage(optuna_storage)
    searcher = TruthfulOptunaSearch(sampler=make_sampler(spec.search.seed, num_samples), study_name=name, storage=storage)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(spec: SearchSpec):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=M.EPOCH, max_t=spec.fixed.train.epochs,
                         grace_period=min(spec.search.grace_period, spec.fixed.train.epochs),
                         reduction_factor=spec.search.reduction_factor)


def status_reporter(spec: SearchSpec):
    """Ray's status table with the searched hyperparameters and the metrics that matter, every 30 s at most."""
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={M.EPOCH: "epoch", M.VAL_LOSS: "val_loss", M.SEARCH_METRIC: "best_val_loss", M.VAL_ACC: "val_acc"},
        parameter_columns={k.replace(".", "/"): k.split(".")[1] for k in spec.space},
        max_report_frequency=30, sort_by_metric=True, max_progress_rows=30, max_error_rows=10)


def trainable_with(data: Split, resources: dict):
    from ray import tune

    # The preprocessed arrays go to the object store once; every trial on a node maps the same copy.
    return tune.with_resources(tune.with_parameters(train_trial, data=data), resources)


def run_search(spec: SearchSpec, num_samples: int, name: str, storage: str = "ray_results", *, address: str | None = None,
               shared_storage: bool = False, optuna_storage: str | None = None, verbose: int = 1, log=print):
    from ray import tune

    data_dir = Path(spec.fixed.data.data_dir).resolve()
    spec.fixed = spec.fixed.with_overrides({"data.data_dir": str(data_dir)})
    check_data_dir(data_dir)
    check_backbones(spec.fixed.model)  # every trial would fail on a missing weights file: say so now
    data = load_train_val(spec.fixed, log)  # all bad-input errors happen here, before Ray starts
    storage = check_local_storage(storage)
    init_ray(address)
    check_cluster_storage(storage, shared_storage)
    resources, max_conc = capacity(spec)
    exp = join_uri(storage, name)
    if meta_exists(exp):
        raise UserError(f"{exp} already holds a search; continue it with `mmsa resume {exp}` or pick another --name.")
    meta = {"name": name, "storage": storage, "num_samples": num_samples, "data_dir": str(data_dir),
            "data_fingerprint": data.train.fingerprint, "optuna_storage": optuna_storage,
            "created": datetime.datetime.now().isoformat(timespec="seconds"), "resources": resources,
            "max_concurrent": max_conc, "spec": spec_to_dict(spec)}
    write_meta(exp, meta)
    log(f"search {name}: {num_samples} trials, {max_conc} at once, {resources} each; results in {exp}")
    from .callbacks import (
        CheckpointPruner,
        StateBackup,
        upload_state_after_each_checkpoint,
    )

    upload_state_after_each_checkpoint()

    tuner = tune.Tuner(
        trainable_with(data, resources),
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=M.SEARCH_METRIC, mode=M.OPT_MODE, num_samples=num_samples,
                                    search_alg=make_searcher(spec, name, max_conc, optuna_storage, num_samples),
                                    scheduler=make_scheduler(spec), trial_dirname_creator=trial_dirname,
                                    reuse_actors=False),  # a fresh process per trial: its GPU memory goes back
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=verbose, progress_reporter=status_reporter(spec),
            # Ray keeps every checkpoint; CheckpointPruner deletes (search/checkpoints.py says why not Ray).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=M.OPT_METRIC,
                                                    checkpoint_score_order=M.OPT_MODE),
            callbacks=[CheckpointPruner(spec.search.keep_checkpoints), StateBackup()],
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        ),
    )
    return tuner.fit()


def join_uri(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if _is_uri(storage) else str(Path(storage) / name)


def _fs(location: str):
    """A pyarrow filesystem and path for a local path or a URI (s3://, gs://, file://), as Ray uses them."""
    import pyarrow.fs as pafs

    if _is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def meta_exists(exp: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = _fs(exp)
    return fs.get_file_info(f"{path}/{META}").type == pafs.FileType.File


def write_meta(exp: str, meta: dict) -> None:
    from .state_backup import write_atomic

    fs, path = _fs(exp)
    fs.create_dir(path, recursive=True)
    write_atomic(fs, f"{path}/{META}", yaml.safe_dump(meta, sort_keys=False).encode())


def read_meta(exp_dir: str | Path) -> dict:
    if not meta_exists(str(exp_dir)):
        raise UserError(f"{exp_dir}: not a search experiment (no {META}; `mmsa search --name NAME` creates ray_results/NAME).")
    fs, path = _fs(str(exp_dir))
    with fs.open_input_stream(f"{path}/{META}") as f:
        return yaml.safe_load(f.read().decode())


def check_state(exp: str, log=print) -> None:
    """Put back whole copies of state files a crash cut short; refuse (with what to do) when none exists."""
    from .state_backup import BACKUP_DIR, damaged, repair

    fs, path = _fs(exp)
    fixed = repair(fs, path)
    if fixed:
        log(f"restored {', '.join(fixed)} from {BACKUP_DIR}/: the search was killed while Ray was writing them")
    bad = damaged(fs, path)
    if bad:
        raise UserError(f"{exp}: Ray's state file(s) {', '.join(bad)} are empty or cut off (the search was killed while "
                        f"Ray was writing them) and {BACKUP_DIR}/ holds no whole copy. Finished trials stay readable with "
                        f"`mmsa status {exp}`; start a new search with `mmsa search --name NEW`.")


def resume_search(exp_dir: str | Path, *, address: str | None = None, verbose: int = 1, log=print):
    from ray import tune

    exp = str(exp_dir) if _is_uri(str(exp_dir)) else str(Path(exp_dir).resolve())
    meta = read_meta(exp)
    spec = parse_spec(meta["spec"], f"{exp}/{META}")
    check_state(exp, log)  # cheap, and a refusal should come before hashing and preprocessing the data
    now = data_fingerprint(meta["data_dir"], "train")
    if now != meta["data_fingerprint"]:
        raise UserError(f"{meta['data_dir']}: the data changed since the search started (fingerprint "
                        f"{meta['data_fingerprint'][:12]} -> {now[:12]}); resuming would mix results of two datasets. "
                        "Start a new search with `mmsa search --name NEW`.")
    data = load_train_val(spec.fixed, log)
    init_ray(address)
    if not tune.Tuner.can_restore(exp):
        raise UserError(f"{exp}: Ray has no saved experiment state here yet (the search was stopped before its first "
                        "trial started); start it again with `mmsa search`.")
    resources = meta["resources"]
    log(f"resuming search {meta['name']} in {exp}")
    from .callbacks import upload_state_after_each_checkpoint

    upload_state_after_each_checkpoint()
    tuner = tune.Tuner.restore(exp, trainable=trainable_with(data, resources), resume_unfinished=True,
                               resume_errored=True)
    from .asha_state import replay
    from .results import load_trials

    scheduler = tuner._local_tuner._tune_config.scheduler  # Ray has no public way to hand a restored search its rungs
    replay(scheduler, load_trials(exp))
    return tuner.fit()
