"""Launching and resuming a search: Ray Tune + Optuna (TPE) + ASHA, one GPU per trial when there are GPUs."""
from __future__ import annotations

import datetime
from pathlib import Path

from data_pipeline.dataset import check_data_dir
from data_pipeline.errors import UserError
from data_pipeline.preprocess import data_fingerprint
from model.backbones import check_backbones
from model.run import load_train_val
from model.train import Split

from . import experiment, ray_internals, storage
from .algorithms import make_scheduler, make_searcher, status_reporter
from .ray_cluster import capacity, check_cluster_storage, init_ray
from .schema import M
from .space import SearchSpec, parse_spec, spec_to_dict
from .trainable import train_trial


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def trainable_with(data: Split, resources: dict):
    from ray import tune

    # The preprocessed arrays go to the object store once; every trial on a node maps the same copy.
    return tune.with_resources(tune.with_parameters(train_trial, data=data), resources)


def _callbacks(spec: SearchSpec) -> list:
    from .callbacks import CheckpointPruner, StateBackup

    return [CheckpointPruner(spec.search.keep_checkpoints), StateBackup()]


def run_search(spec: SearchSpec, num_samples: int, name: str, storage_dir: str = "ray_results", *,
               address: str | None = None, shared_storage: bool = False, optuna_storage: str | None = None,
               verbose: int = 1, log=print):
    from ray import tune

    data_dir = Path(spec.fixed.data.data_dir).resolve()
    spec.fixed = spec.fixed.with_overrides({"data.data_dir": str(data_dir)})
    check_data_dir(data_dir)
    check_backbones(spec.fixed.model)  # every trial would fail on a missing weights file: say so now
    data = load_train_val(spec.fixed, log)  # all bad-input errors happen here, before Ray starts
    storage_dir = storage.check_local_storage(storage_dir)
    init_ray(address)
    check_cluster_storage(storage_dir, shared_storage)
    resources, max_conc = capacity(spec)
    exp = experiment.location(storage_dir, name)
    if experiment.meta_exists(exp):
        raise UserError(f"{exp} already holds a search; continue it with `mmsa resume {exp}` or pick another --name.")
    meta = {"name": name, "storage": storage_dir, "num_samples": num_samples, "data_dir": str(data_dir),
            "data_fingerprint": data.train.fingerprint, "optuna_storage": optuna_storage,
            "created": datetime.datetime.now().isoformat(timespec="seconds"), "resources": resources,
            "max_concurrent": max_conc, "spec": spec_to_dict(spec)}
    experiment.write_meta(exp, meta)
    log(f"search {name}: {num_samples} trials, {max_conc} at once, {resources} each; results in {exp}")
    ray_internals.upload_state_after_each_checkpoint()
    tuner = tune.Tuner(
        trainable_with(data, resources),
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=M.SEARCH_METRIC, mode=M.OPT_MODE, num_samples=num_samples,
                                    search_alg=make_searcher(spec, name, max_conc, optuna_storage, num_samples),
                                    scheduler=make_scheduler(spec), trial_dirname_creator=trial_dirname,
                                    reuse_actors=False),  # a fresh process per trial: its GPU memory goes back
        run_config=tune.RunConfig(
            name=name, storage_path=storage_dir, verbose=verbose, progress_reporter=status_reporter(spec),
            # Ray keeps every checkpoint; CheckpointPruner deletes (search/checkpoint_retention.py says why not Ray).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=M.OPT_METRIC,
                                                    checkpoint_score_order=M.OPT_MODE),
            callbacks=_callbacks(spec),
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        ),
    )
    return tuner.fit()


def resume_search(exp_dir: str | Path, *, address: str | None = None, verbose: int = 1, log=print):
    from ray import tune

    from .asha_state import replay
    from .results import load_trials

    exp = storage.normalize(exp_dir)
    meta = experiment.read_meta(exp)
    spec = parse_spec(meta["spec"], f"{exp}/{experiment.META}")
    experiment.check_state(exp, log)  # cheap, and a refusal should come before hashing and preprocessing the data
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
    log(f"resuming search {meta['name']} in {exp}")
    ray_internals.upload_state_after_each_checkpoint()
    tuner = tune.Tuner.restore(exp, trainable=trainable_with(data, meta["resources"]), resume_unfinished=True,
                               resume_errored=True)
    replay(ray_internals.restored_scheduler(tuner), load_trials(exp))
    return tuner.fit()
