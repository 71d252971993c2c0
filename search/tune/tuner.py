"""Launching and resuming a search: Ray Tune + Optuna (TPE) + ASHA, one GPU per trial when there are GPUs."""
from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path

from data_pipeline.dataset import check_data_dir
from data_pipeline.errors import UserError
from data_pipeline.printable import term
from data_pipeline.preprocess import check_same_data, data_fingerprint
from model.run import load_train_val
from model.train import Split

from search.experiment import layout as experiment

from search.experiment import ray_internals, storage, trial_backup
from search.experiment.layout import trial_dirname  # noqa: F401 - tuner.pkl of earlier searches names it here
from search.experiment.lock import ExperimentLock
from search.settings.cli_flags import OPTIONS
from search.tune.algorithms import check_new_study, make_scheduler, make_searcher, status_reporter
from search.tune.prerun import check_before_ray, sigterm_like_ctrl_c, start_ray  # noqa: F401 - sigterm_like_ctrl_c: its old home
from search.tune.ray_cluster import capacity, check_fits
from search.settings.duration import describe, parse_duration
from search.settings.space import SearchSpec, parse_spec, spec_to_dict
from search.trial.trainable import train_trial
from search.selection.opened import Experiment


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_search_args(num_samples, name: str, optuna_storage: str | None) -> None:
    """The arguments a search is started with, checked before anything is read, written or started."""
    if num_samples is None:
        raise UserError("--num-samples: the number of trials is needed.")
    OPTIONS["num_samples"].check(num_samples)
    if not NAME_RE.fullmatch(str(name)):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit, at "
                        "most 128 characters): the experiment is the folder STORAGE/NAME and must stay inside STORAGE.")
    if optuna_storage:
        check_new_study(optuna_storage, name)


def check_spec(spec: SearchSpec) -> None:
    """Relations between keys that each passed their own check (flags may override the space file's values)."""
    s, epochs = spec.search, spec.fixed.train.epochs
    s.budget_s  # noqa: B018 - a bad --time-budget is refused here, before anything starts
    if s.grace_period > epochs:
        raise UserError(f"search.grace_period {s.grace_period} is more than train.epochs {epochs}: ASHA could never "
                        "stop a trial. Lower --grace-period, or raise the epochs in the space file's fixed: section.")


def checkpointing(spec: SearchSpec) -> dict:
    return {"checkpoint_mode": spec.search.checkpoint_mode, "checkpoint_every": spec.search.checkpoint_every}


def trainable_with(data: Split, resources: dict, ck: dict | None = None):
    from ray import tune

    # The preprocessed arrays go to the object store once; every trial on a node maps the same copy.
    return tune.with_resources(tune.with_parameters(train_trial, data=data, checkpointing=ck), resources)


def _callbacks(spec: SearchSpec, exp: str) -> list:
    from search.tune.callbacks import CheckpointPruner, StateBackup, StopWhenStorageFull, TrialRetention
    from search.tune.worker_crash import WorkerCrashNotice

    return [CheckpointPruner(spec.search.keep_checkpoints), StateBackup(), StopWhenStorageFull(exp),
            TrialRetention(spec.search.keep_best_trials, spec.search.metric), WorkerCrashNotice()]


def _fit(tuner, callbacks: list, exp: str):
    """Tuner.fit, then back up (and sign) Ray's last state snapshot, however fit ended; a full storage disk ends
    with one message saying what was kept and how to go on, instead of whatever Ray tripped over first."""
    # StopWhenStorageFull stopped it: space freed since (finished trials' states deleted) does not make it a Ctrl-C
    stopped = lambda: any(getattr(cb, "stopped_full", False) for cb in callbacks)  # noqa: E731
    from search.tune.time_budget import TimeBudget, in_force

    quiet = ray_internals.NoResultsYet()
    logging.getLogger(ray_internals.ANALYSIS_LOGGER).addFilter(quiet)
    try:
        with in_force(next((cb for cb in callbacks if isinstance(cb, TimeBudget)), None)):
            result = tuner.fit()
    except Exception:
        _refuse_if_full(exp, stopped())
        raise
    finally:
        logging.getLogger(ray_internals.ANALYSIS_LOGGER).removeFilter(quiet)
        ray_internals.forget_resume_budget()  # a resume that failed before Ray's resume ran must not pass it on
        for cb in callbacks:
            if hasattr(cb, "flush"):
                cb.flush()
    _refuse_if_full(exp, stopped())
    return result


def _quiet_fixed_points() -> None:
    """A run of fixed configurations (`mmsa confirm`, started or resumed) differs from its run config on purpose."""
    for logger_name in ray_internals.FIXED_POINTS_LOGGERS:
        logging.getLogger(logger_name).setLevel(logging.ERROR)


def _refuse_if_full(exp: str, stopped: bool = False) -> None:
    free = storage.free_bytes(exp)
    if free is not None and (free < storage.MIN_FREE_BYTES or stopped):
        raise UserError(f"the storage of {exp} is full ({free / 2**20:.1f} MiB free), so the search stopped. Every "
                        f"finished epoch is kept (`mmsa status {exp}`, `mmsa export`, `mmsa report` work now). Free some "
                        f"space, or move the experiment to a larger disk (it is relocatable), then continue with "
                        f"`mmsa resume {exp}`.")


def run_search(spec: SearchSpec, num_samples: int, name: str, storage_dir: str = "ray_results", *,
               address: str | None = None, shared_storage: bool = False, optuna_storage: str | None = None,
               verbose: int = 1, log=print, points: list[dict] | None = None, extra_meta: dict | None = None,
               warm_start: list[str] | None = None, warm_any_data: bool = False, break_lock: bool = False,
               mlflow: str | None = None):
    """A search over spec's space (Optuna proposes, ASHA stops); or, with `points`, exactly these trial configs, each
    trained for all its epochs (`mmsa confirm`: fixed configurations with fresh seeds, no early stopping by ASHA).
    warm_start: experiments whose finished trials inside the space Optuna gets first (search/selection/warm_start.py).
    mlflow: --mlflow's value ("": the default store; search/tune/mlflow_log.py)."""
    from ray import tune

    check_search_args(num_samples, name, optuna_storage)
    check_spec(spec)
    data_dir = Path(spec.fixed.data.data_dir).resolve()
    spec.fixed = spec.fixed.with_overrides({"data.data_dir": str(data_dir)})
    check_data_dir(data_dir)
    warm, warm_meta = [], {}
    if warm_start:
        from search.selection.warm_start import collect

        target = storage.normalize(experiment.location(storage_dir, name))
        if any(storage.normalize(str(w)) == target for w in warm_start):
            raise UserError(f"--warm-start {target}: that is the experiment this search would create (--name "
                            f"{name}); warm-start from an earlier search.")

        warm, sources = collect(warm_start, spec, data_fingerprint(data_dir, "train"), warm_any_data, log)
        warm_meta = {"warm_start": sources}
    storage_dir = check_before_ray(spec, storage_dir, mlflow=mlflow)
    data = load_train_val(spec.fixed, log)  # all bad-input errors happen here, before Ray starts
    start_ray(address, storage_dir, shared_storage)
    resources, max_conc = capacity(spec)
    exp = experiment.location(storage_dir, name)
    with ExperimentLock(exp, f"mmsa search --name {name}", break_lock):
        if experiment.meta_exists(exp):
            if experiment.ever_ran(exp):
                raise UserError(f"{exp} already holds a search; continue it with `mmsa resume {exp}` (or this command "
                                "with --if-exists resume), or pick another --name.")
            log(f"{exp}: an earlier start of this search never ran a trial; starting it again")
            experiment.clear_start(exp)
        meta = {"name": name, "storage": storage_dir, "num_samples": num_samples, "data_dir": str(data_dir),
                "data_fingerprint": data.train.fingerprint, "optuna_storage": optuna_storage,
                "created": datetime.datetime.now().isoformat(timespec="seconds"), "resources": resources,
                "max_concurrent": max_conc, "shared_storage": shared_storage, "spec": spec_to_dict(spec), **warm_meta,
                **(extra_meta or {})}
        experiment.write_meta(exp, meta)
        log(f"search {name}: {num_samples} trials, {max_conc} at once, {resources} each; results in {exp}")
        ray_internals.upload_state_after_each_checkpoint()
        callbacks = _callbacks(spec, exp)
        budget = None
        if points is None and spec.search.budget_s:  # `mmsa confirm` (points) runs to the end: no budget
            from search.tune.time_budget import TimeBudget

            budget = TimeBudget(exp, spec.search.budget_s)
            callbacks.append(budget)
        if mlflow is not None:
            from search.tune.mlflow_log import logger_for

            callbacks.append(logger_for(exp, mlflow))
        if points is None:
            param_space = spec.param_space()
            search_alg = make_searcher(spec, name, max_conc, optuna_storage, num_samples, warm)
            scheduler = make_scheduler(spec)
        else:
            from ray.tune.schedulers import FIFOScheduler
            from ray.tune.search import BasicVariantGenerator

            param_space = spec.fixed.to_dict()
            search_alg = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=max_conc)
            _quiet_fixed_points()
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable_with(data, resources, checkpointing(spec)),
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=spec.search.objective.running, mode=spec.search.objective.mode, num_samples=num_samples,
                                        search_alg=search_alg,
                                        scheduler=scheduler, trial_dirname_creator=trial_dirname,
                                        # warm workers: start-up (imports, weights) once per process, not per trial
                                        reuse_actors=spec.search.reuse_workers),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_dir, verbose=verbose, progress_reporter=status_reporter(spec), stop=budget,
                # Ray keeps every checkpoint; CheckpointPruner deletes (search/trial/checkpoint_retention.py says why).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=spec.search.objective.metric,
                                                        checkpoint_score_order=spec.search.objective.mode),
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            ),
        )
        return _fit(tuner, callbacks, exp)


def resume_search(exp_dir: str | Path | Experiment, *, address: str | None = None, verbose: int = 1,
                  trust_state: bool = False, log=print, break_lock: bool = False, shared_storage: bool = False,
                  time_budget: str | None = None, mlflow: str | None = None):
    """shared_storage: as `mmsa search --shared-storage` (the search's own setting counts too).
    mlflow: --mlflow's value; None: MLflow logging continues where the search logged (search/tune/mlflow_log.py).
    time_budget: a new search.time_budget (--time-budget), written into the search's metadata; None: the search's."""
    from ray import tune

    from search.tune.asha_state import replay

    opened = Experiment.open(exp_dir, normalize=True)
    exp, meta = opened.path, opened.meta
    spec = parse_spec(meta["spec"], f"{exp}/{experiment.META}")
    if not experiment.ever_ran(exp):
        raise UserError(f"{exp}: this search was stopped before its first trial started, so there is nothing to resume; "
                        f"start it again with the same `mmsa search ... --name {meta['name']}` (the name is free).")
    check_before_ray(spec, exp, mlflow=mlflow, what=f"{exp}", fix="move the experiment to a writable disk (it is relocatable), then "
                     "resume it there")  # Ray writes the resumed trials and state into the experiment itself
    with ExperimentLock(exp, f"mmsa resume {exp}", break_lock):
        used = _budget_left(exp, meta, spec, time_budget)
        experiment.check_state(exp, log, trust_state)  # cheap: refusals come before hashing and preprocessing data
        fs, path = storage.filesystem(exp)
        repaired = trial_backup.repair_trials(fs, path)
        if repaired:
            log(f"restored params.json/result.json of {len(repaired)} trial(s) from their whole copies (the storage "
                "was full or the search was killed while Ray was writing them)")
        check_same_data(exp, meta["data_fingerprint"], meta["data_dir"], meta["data_dir"], "resuming would mix results "
                        "of two datasets. Start a new search with `mmsa search --name NEW`.")
        data = load_train_val(spec.fixed, log)
        start_ray(address, exp, shared_storage or meta.get("shared_storage") is True)
        check_fits(meta.get("resources"), exp)  # e.g. resumed on a smaller machine than the search started on
        if not tune.Tuner.can_restore(exp):
            raise UserError(f"{exp}: Ray has no saved experiment state here yet (the search was stopped before its "
                            "first trial started); start it again with `mmsa search`.")
        log(term(f"resuming search {meta['name']} in {exp}"))
        ray_internals.upload_state_after_each_checkpoint()
        ray_internals.relocate_new_trials_on_restore()
        ray_internals.keep_our_files_out_of_ray_staging()
        tuner = tune.Tuner.restore(exp, trainable=trainable_with(data, meta["resources"], checkpointing(spec)),
                                   resume_unfinished=True, resume_errored=True)
        if used is not None:
            from search.tune.time_budget import TimeBudget

            budget = TimeBudget(exp, spec.search.budget_s, used[0])
            ray_internals.budget_on_restore(tuner, budget, budget, reopen=used[1])
            log(f"time budget {describe(spec.search.budget_s)}: {describe(used[0])} used, "
                f"{describe(spec.search.budget_s - used[0])} left")
        if experiment.is_confirm_run(meta):
            _quiet_fixed_points()
        else:  # `mmsa confirm` runs without ASHA: nothing to replay
            replay(ray_internals.restored_scheduler(tuner), opened.fresh_trials(), spec.search.objective)
        from search.tune.callbacks import follow_search_metric
        from search.tune.mlflow_log import MlflowLogger, logger_for

        ray_internals.set_restored_callback(tuner, MlflowLogger, logger_for(exp, mlflow))
        callbacks = ray_internals.restored_callbacks(tuner)
        follow_search_metric(callbacks, spec.search.metric)  # tuner.pkl of a search from before: no metric in them
        return _fit(tuner, callbacks, exp)


def _budget_left(exp: str, meta: dict, spec: SearchSpec, time_budget: str | None) -> tuple[float, bool] | None:
    """The time a resumed search has used and whether its budget stopped it (None: it has no budget); refused when
    nothing is left. A new --time-budget replaces the search's in its metadata (status and later resumes use it)."""
    from search.experiment import time_used

    if time_budget is not None:
        parse_duration(time_budget, "--time-budget")
        spec.search.time_budget = str(time_budget)
    used = None
    if spec.search.budget_s and not experiment.is_confirm_run(meta):
        used = time_used.read_checked(exp)
        spent = time_used.spent_line(exp, spec.search.budget_s, used)
        if spent:
            raise UserError(spent)
    if time_budget is not None:  # kept only by a resume that runs: a refused one leaves the search's budget as it was
        meta["spec"] = spec_to_dict(spec)
        experiment.write_meta(exp, meta)
    return used
