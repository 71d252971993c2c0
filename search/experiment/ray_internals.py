"""Every place mmsa-tune reaches into Ray's or Optuna's private internals, behind one door.

Ray Tune and Optuna have no public API for some things a crash-safe search needs (handing a restored search its ASHA
rungs, forcing a state upload after each checkpoint, reading the trial table without a running Ray, ...). Each such
touchpoint is one function here, and tests/test_ray_internals.py exercises each one against the installed versions
(a canary per touchpoint). When a new release moves one, the call raises InternalsChanged naming the touchpoint, what
it is for and the versions it was tested with, instead of a search that silently stops resuming correctly.
pyproject.toml caps ray and optuna to the tested range (TESTED below); raise the caps only after the canaries pass.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re

# The versions these touchpoints were written and tested against (pyproject.toml caps the same range).
TESTED = {"ray": "2.60", "optuna": "5.0"}

# Ray's experiment-state files in an experiment directory (written by Ray's driver, read by Tuner.restore), as named
# by Ray 2.60 (TuneController/Searcher/SearchGenerator/BasicVariantGenerator/Callback.CKPT_FILE_TMPL and
# tuner_internal._TUNER_PKL; canary: tests/test_ray_internals.py test_canary_state_file_names_are_rays).
TRIAL_TABLE_PATTERN = "experiment_state-*.json"  # the trial table: every trial's state, config and failures
TUNER_FILE = "tuner.pkl"
# What Tuner.fit writes before the first trial-table snapshot: the tuner and the search algorithm's state.
# basic-variant-state-*.json (a pickle too): the search algorithm of `mmsa confirm` (fixed configurations).
SEARCH_START_PATTERNS = (TUNER_FILE, "searcher-state-*.pkl", "search_gen_state-*.json", "basic-variant-state-*.json")
STATE_FILE_PATTERNS = (TRIAL_TABLE_PATTERN, *SEARCH_START_PATTERNS, "callback-states-*.pkl")


class InternalsChanged(RuntimeError):
    """A Ray/Optuna internal that mmsa-tune relies on is not where it was."""


def _checkpoint_manager(attr: str, purpose: str):
    """Ray's private _ExperimentCheckpointManager (the driver's experiment-state saving), checked to have `attr`."""
    try:
        from ray.tune.execution import experiment_state as es

        manager = es._ExperimentCheckpointManager
        getattr(manager, attr)
        return manager
    except (ImportError, AttributeError) as e:
        raise _moved(f"ray.tune.execution.experiment_state._ExperimentCheckpointManager.{attr}", purpose,
                     str(e)) from None


def _moved(touchpoint: str, purpose: str, detail: str = "") -> InternalsChanged:
    import optuna
    import ray

    return InternalsChanged(
        f"Ray/Optuna internal `{touchpoint}` (used to {purpose}) is not as expected{': ' + detail if detail else ''}. "
        f"Installed: ray {ray.__version__}, optuna {optuna.__version__}; mmsa-tune is tested with ray "
        f"{TESTED['ray']}.x and optuna {TESTED['optuna']}.x. Install those (pip install 'ray[tune]=={TESTED['ray']}.*' "
        f"'optuna=={TESTED['optuna']}.*') or report this.")


def is_state_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in STATE_FILE_PATTERNS)


def is_trial_table(name: str) -> bool:
    return fnmatch.fnmatch(name, TRIAL_TABLE_PATTERN)


def is_search_start_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in SEARCH_START_PATTERNS)


def newest_first(names) -> list[str]:
    """State files of one kind, the one Tuner.restore reads first. Ray 2.60 takes the greatest name
    (experiment_state._find_newest_experiment_checkpoint, utils.util._load_newest_checkpoint: `max`), i.e. the
    latest session start time in the name, never the modification time (Ray's final sync rewrites every file, so
    mtimes tie). Canary: test_canary_newest_state_file_is_the_one_ray_restores."""
    return sorted(names, reverse=True)


def newest(names) -> str | None:
    """The state file of one kind that Tuner.restore reads (newest_first's rule); None when there is none."""
    return next(iter(newest_first(names)), None)


# ---- Ray Tune --------------------------------------------------------------------------------------------------
def restored_scheduler(tuner):
    """The scheduler of a Tuner made by Tuner.restore (Ray has no public way to reach it)."""
    try:
        return tuner._local_tuner._tune_config.scheduler
    except AttributeError as e:
        raise _moved("Tuner._local_tuner._tune_config.scheduler", "hand a resumed search its ASHA rungs", str(e)) from None


def restored_callbacks(tuner) -> list:
    """The callbacks of a Tuner made by Tuner.restore (restored from tuner.pkl with the search's RunConfig)."""
    try:
        return list(tuner._local_tuner._run_config.callbacks or [])
    except AttributeError as e:
        raise _moved("Tuner._local_tuner._run_config.callbacks", "back up the last state of a resumed search",
                     str(e)) from None


def set_restored_callback(tuner, kind: type, callback=None) -> None:
    """Replace the callbacks of type `kind` that Tuner.restore brought back from tuner.pkl by `callback` (None: drop
    them): a resume decides its own (a budget raised, MLflow logging to the store its signed record names)."""
    try:
        rc = tuner._local_tuner._run_config
    except AttributeError as e:
        raise _moved("Tuner._local_tuner._run_config", "set the callbacks of a resumed search", str(e)) from None
    rc.callbacks = [c for c in (rc.callbacks or []) if type(c) is not kind] + ([callback] if callback else [])


def asha_bracket(scheduler):
    """ASHA's one bracket, whose on_result(trial, epoch, reward) records a rung result and decides."""
    try:
        brackets = scheduler._brackets
        bracket = brackets[0]
        bracket.on_result, bracket._rungs  # noqa: B018 - both are used
    except (AttributeError, IndexError, TypeError) as e:
        raise _moved("ASHAScheduler._brackets[0]", "rebuild ASHA's rungs on resume", str(e)) from None
    if len(brackets) != 1:
        raise ValueError("ASHA rungs can only be rebuilt for a single bracket")
    return bracket


def asha_rungs(scheduler) -> list[tuple[float, dict]]:
    """(milestone, {trial_id: reward}) per rung."""
    try:
        return [(m, dict(rec)) for m, rec in asha_bracket(scheduler)._rungs]
    except (TypeError, ValueError) as e:
        raise _moved("_Bracket._rungs", "rebuild ASHA's rungs on resume", str(e)) from None


def upload_state_after_each_checkpoint() -> None:
    """Ray uploads the experiment state in the background, skipping an upload while one is in flight, so the stored
    state can lag the checkpoints; a kill then restarts a trial from scratch and Ray overwrites its result.json
    (seen in CI). Ray's remedy is to force and wait for an upload every `num_to_keep` checkpoints of a trial; we set
    num_to_keep=None (search/tune/callbacks.py's CheckpointPruner prunes), so ask for that after every checkpoint. Ray
    has no public switch: patch the constructor's default. Idempotent."""
    import inspect

    manager = _checkpoint_manager("__init__", "force a state upload after each checkpoint")
    init = manager.__init__
    if getattr(init, "_mmsa", False):
        return
    if "sync_every_n_trial_checkpoints" not in inspect.signature(init).parameters:
        raise _moved("_ExperimentCheckpointManager(sync_every_n_trial_checkpoints=...)", "force a state upload after "
                     "each checkpoint", "the parameter is gone")

    def patched(self, *args, sync_every_n_trial_checkpoints=None, **kwargs):
        init(self, *args, sync_every_n_trial_checkpoints=sync_every_n_trial_checkpoints or 1, **kwargs)

    patched._mmsa = True
    manager.__init__ = patched


def sync_every_n_trial_checkpoints(manager) -> int:
    """What the patch above sets, read back (for the canary test)."""
    try:
        return manager._sync_every_n_trial_checkpoints
    except AttributeError as e:
        raise _moved("_ExperimentCheckpointManager._sync_every_n_trial_checkpoints", "force a state upload after "
                     "each checkpoint", str(e)) from None


def driver_state_files(trial, files: bool = True) -> tuple[dict[str, bytes], object, str]:
    """Ray's experiment-state files as the driver staged them (whole: Ray writes them there before its background
    upload; only with files=True), plus the storage filesystem and the experiment's path on it."""
    from pathlib import Path

    try:
        storage = trial.storage
        staging = Path(storage.experiment_driver_staging_path)
        fs, exp = storage.storage_filesystem, storage.experiment_fs_path
    except AttributeError as e:
        raise _moved("Trial.storage.experiment_driver_staging_path", "back up the experiment state", str(e)) from None
    if not files:
        return {}, fs, exp
    staged = {p.name: p.read_bytes() for p in staging.iterdir() if p.is_file() and is_state_file(p.name)}
    return staged, fs, exp


def trial_states(data: bytes | str) -> dict[str, dict] | None:
    """Trial id -> {"state", "failures"} from the bytes of an experiment_state-*.json; None if it is not whole.
    The layout (a `trial_data` list of [trial metadata JSON, runtime metadata JSON]) is Ray's, not a public format."""
    try:
        rows = json.loads(data)["trial_data"]
    except (ValueError, KeyError, TypeError):
        return None
    out = {}
    try:
        for meta_s, runtime_s in rows:
            meta = json.loads(meta_s) if isinstance(meta_s, str) else meta_s
            rt = json.loads(runtime_s) if isinstance(runtime_s, str) else runtime_s
            out[meta["trial_id"]] = {"state": meta.get("status", "?"), "failures": rt.get("num_failures", 0)}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _moved("experiment_state-*.json trial_data layout", "read trial states without Ray", str(e)) from None
    return out


# Ray 2.60 ends a trial's training thread by raising this inside tune.report (train/_internal/session.py: sys.exit(0)
# once the driver stopped the trial: ASHA's verdict, a stop criterion, or a search that is pausing). Canary:
# test_canary_ray_stops_the_trial_thread_with_system_exit_and_runs_exit_handlers.
TRIAL_THREAD_STOPPED = SystemExit


def run_at_worker_exit(fn, *args, **kwargs) -> None:
    """Run fn(*args, **kwargs) when Ray ends the trial's worker process: Ray 2.60 ends an actor it no longer needs with
    __ray_terminate__ (exit_actor), which runs the process's atexit handlers (canary: the test named above)."""
    import atexit

    atexit.register(fn, *args, **kwargs)


def cancel_at_worker_exit(fn) -> None:
    import atexit

    atexit.unregister(fn)


QUIET_LOGGERS = ("ray.train._internal.storage",)  # one line per checkpoint is noise
# `mmsa confirm` runs fixed configurations whose values differ from the fixed run config on purpose (seed, lr, ...):
# Ray warns once per value ("Pre-set value ... is not equal to the value of parameter").
FIXED_POINTS_LOGGERS = ("ray.tune.search.variant_generator",)
# Tuner.fit ends by reading every trial's result file into an ExperimentAnalysis we never use (our readers are
# search/selection/results.py); a trial still queued when Ctrl-C or a time budget stopped the search never started, so
# it has no files, and Ray warns with one FileNotFoundError per such trial about a state that is normal: resume starts
# those trials.
ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
NO_RESULTS_WARNING = "Failed to fetch metrics for"
_NOT_FOUND_AT = re.compile(r": FileNotFoundError\('Could not fetch metrics for .*were not found at (.+)'\)$")


class NoResultsYet(logging.Filter):
    """Drops that warning when every trial it lists never started (its folder holds no params.json, which Ray writes
    when a trial starts); a started trial whose result file is gone (deleted, or storage the driver does not see) and
    any other failure (an unreadable file) keep the whole warning. The folder is looked at on the driver's disk: on
    object storage every listed trial looks unstarted, so there the warning is dropped whatever the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().splitlines()
        if not (lines and lines[0].startswith(NO_RESULTS_WARNING) and len(lines) > 1):
            return True
        found = [_NOT_FOUND_AT.search(line) for line in lines[1:]]
        return not all(m and not os.path.exists(os.path.join(m.group(1), "params.json")) for m in found)


# ---- Optuna through Ray's OptunaSearch -------------------------------------------------------------------------
def optuna_trials(searcher) -> dict:
    """Ray trial id -> optuna.Trial of an OptunaSearch."""
    try:
        return searcher._ot_trials
    except AttributeError as e:
        raise _moved("OptunaSearch._ot_trials", "tell Optuna what really happened to each trial", str(e)) from None


def optuna_study(searcher):
    try:
        return searcher._ot_study
    except AttributeError as e:
        raise _moved("OptunaSearch._ot_study", "tell Optuna what really happened to each trial", str(e)) from None


def completed_trials(searcher) -> set:
    """Ray trial ids the searcher already told Optuna about."""
    try:
        return searcher._completed_trials
    except AttributeError as e:
        raise _moved("OptunaSearch._completed_trials", "tell Optuna each trial's end once", str(e)) from None


def intermediate_values(ot_trial) -> dict[int, float]:
    """Epoch -> value already reported for an optuna.Trial (Optuna's Trial has no public getter)."""
    try:
        return ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values
    except AttributeError as e:
        raise _moved("optuna.Trial._trial_id", "skip epochs Optuna has already been told after a resume", str(e)) from None


def relocate_new_trials_on_restore() -> None:
    """(1) A restored search creates its not-yet-started trials from the experiment spec pickled in Ray's search state,
    whose storage still names the directory the search was started in: resuming a copy wrote new trials into the
    original, and after a move they failed ("Unable to set up cluster storage" naming the old path). Ray already
    re-points restored trials at the directory being resumed (TuneController._restore_trials); do the same for the
    spec new trials come from, right after TuneController.resume.
    (2) The driver's staging folder is keyed by the experiment's name and its original start time, which restored
    trials bring back (in _restore_trials), so a copy resumed earlier in the same Ray session (or on a long-lived
    cluster) left its newer state files and its trials' result folders there; Ray would upload them into this
    experiment and restore the searcher from them. Empty the folder as soon as it is known, before Ray syncs it
    either way: a resume in a fresh Ray session starts from an empty one too. Idempotent."""
    import copy
    from pathlib import Path

    try:
        from ray.tune.execution.tune_controller import TuneController

        resume, restore_trials = TuneController.resume, TuneController._restore_trials
    except (ImportError, AttributeError) as e:
        raise _moved("TuneController.resume / _restore_trials", "resume a moved or copied experiment", str(e)) from None
    if getattr(resume, "_mmsa", False):
        return

    def patched_restore_trials(self, *args, **kwargs):
        trials = restore_trials(self, *args, **kwargs)
        try:
            staging = Path(self._storage.experiment_driver_staging_path)
        except AttributeError as e:
            raise _moved("TuneController._storage.experiment_driver_staging_path", "resume a copied experiment",
                         str(e)) from None
        if staging.is_dir():  # as empty as in a fresh Ray session, where resume always starts
            import shutil

            for f in staging.iterdir():
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
        return trials

    def patched(self, *args, **kwargs):
        resume(self, *args, **kwargs)
        alg = self._search_alg
        try:
            if hasattr(alg, "_experiment"):  # SearchGenerator (a Searcher such as Optuna's)
                specs = [alg._experiment.spec] if alg._experiment is not None else []
            else:  # BasicVariantGenerator (fixed points, e.g. `mmsa confirm`)
                specs = [it.unresolved_spec for it in alg._iterators]
            new = self._storage
            for spec in specs:
                old = spec["storage"]
                if old is not None and (old.storage_fs_path, old.experiment_dir_name) != (new.storage_fs_path,
                                                                                          new.experiment_dir_name):
                    moved = copy.copy(old)
                    moved.storage_filesystem = new.storage_filesystem
                    moved.storage_fs_path = new.storage_fs_path
                    moved.experiment_dir_name = new.experiment_dir_name
                    spec["storage"] = moved
        except (AttributeError, KeyError, TypeError) as e:
            raise _moved("SearchGenerator._experiment.spec / BasicVariantGenerator._iterators[].unresolved_spec "
                         "['storage']", "resume a moved or copied experiment", str(e)) from None

    patched._mmsa = True
    TuneController.resume = patched
    TuneController._restore_trials = patched_restore_trials


def keep_our_files_out_of_ray_staging() -> None:
    """Ray 2.60, on restore (TuneController.resume -> _ExperimentCheckpointManager.sync_down_experiment_state), copies
    EVERY top-level file of the experiment folder whose name ends in .json or .pkl into the driver's staging folder,
    and each later state save (sync_up_experiment_state) uploads the whole staging folder back over the experiment
    folder. Files of ours there (the lease .mmsa-lock.json, confirm.json, ...) were so overwritten, at every save of
    a resumed search, by their copy from the moment of the restore: the lease's heartbeat stood still while its
    holder ran, so another host saw it stale and could take the experiment over. Ray only needs its own state files
    staged (its searcher and callbacks restore from there): drop everything else right after the download, so Ray
    never writes a file of ours. Idempotent."""
    import shutil
    from pathlib import Path

    manager = _checkpoint_manager("sync_down_experiment_state", "keep Ray from writing mmsa's own files (the lease) "
                                  "back over the experiment")
    sync_down = manager.sync_down_experiment_state
    if getattr(sync_down, "_mmsa", False):
        return

    def patched(self, *args, **kwargs):
        sync_down(self, *args, **kwargs)
        try:
            staging = Path(self._storage.experiment_driver_staging_path)
        except AttributeError as e:
            raise _moved("_ExperimentCheckpointManager._storage.experiment_driver_staging_path", "keep Ray from "
                         "writing mmsa's own files back over the experiment", str(e)) from None
        for f in staging.iterdir() if staging.is_dir() else ():
            if not is_state_file(f.name):
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()

    patched._mmsa = True
    patched.__wrapped__ = sync_down  # Ray's own, for the canary that checks the fact above still holds
    manager.sync_down_experiment_state = patched


def trial_storage() -> tuple[object, str]:
    """Inside a trial: the storage filesystem and the trial folder's path on it (where the trial writes its own
    state and best weights, search/trial/async_checkpoint.py). Ray's train context has it as a DeveloperAPI only."""
    try:
        from ray.train._internal.session import get_session

        storage = get_session().storage
        return storage.storage_filesystem, storage.trial_fs_path
    except AttributeError as e:
        raise _moved("ray.train._internal.session.get_session().storage.trial_fs_path", "write a trial's "
                     "checkpoints into its own folder", str(e)) from None


def driver_trial_path(trial) -> tuple[object, str]:
    """On the driver: the storage filesystem and a trial folder's path on it."""
    try:
        return trial.storage.storage_filesystem, trial.storage.trial_fs_path
    except AttributeError as e:
        raise _moved("Trial.storage.trial_fs_path", "delete a finished trial's training state", str(e)) from None


# Ray's FunctionTrainable.reset_config, run in a warm worker before its next trial, waits this many seconds (default
# 2) for the previous trial's thread to end; if it has not, the NEW trial fails ("Could not re-use actor"). Our
# trial thread ends after its background checkpoint writes (best weights, 0.4 GiB at real size), which can take
# longer on a slow disk.
REUSE_THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
REUSE_THREAD_TIMEOUT_S = 600


def let_previous_trial_finish_on_reuse() -> None:
    """Inside a trial (the worker process reads the variable at each reset)."""
    import os

    os.environ[REUSE_THREAD_TIMEOUT_ENV] = str(REUSE_THREAD_TIMEOUT_S)


def reuse_waits_for_thread_env() -> str:
    """The canary: the variable's name as Ray's reset_config reads it (InternalsChanged when it no longer does)."""
    import inspect

    from ray.tune.trainable.function_trainable import FunctionTrainable

    src = inspect.getsource(FunctionTrainable.reset_config)
    if REUSE_THREAD_TIMEOUT_ENV not in src:
        raise _moved(f"FunctionTrainable.reset_config reading {REUSE_THREAD_TIMEOUT_ENV}", "let a warm worker's "
                     "previous trial finish its checkpoint writes before the next trial starts")
    return REUSE_THREAD_TIMEOUT_ENV


def ray_result_keys() -> set[str]:
    """The keys Ray adds to every reported row (result.json holds them beside ours); a row reported again must leave
    them out."""
    try:
        from ray.tune.result import AUTO_RESULT_KEYS, DONE, TRIAL_ID

        return {*AUTO_RESULT_KEYS, DONE, TRIAL_ID, "should_checkpoint", "experiment_tag"}
    except ImportError as e:
        raise _moved("ray.tune.result.AUTO_RESULT_KEYS", "report a finished trial's rows again", str(e)) from None



def budget_on_restore(tuner, stopper, callback, reopen: bool) -> None:
    """Give a search that Tuner.restore brings back the time budget `stopper` (also one of its callbacks). Tuner.restore
    takes neither, and TuneController.resume puts back the stopper pickled in Ray's experiment state (runner_data
    keeps `_stopper`), so the budget is set on the controller right after it resumed. reopen: the budget had ended
    the search, the way Ray ends any (SearchGenerator.set_finished, saved with the searcher's state), so a raised
    budget opens it again (the number of samples still caps it)."""
    try:
        from ray.tune.execution.tune_controller import TuneController

        resume = TuneController.resume
        rc = tuner._local_tuner._run_config
    except (ImportError, AttributeError) as e:
        raise _moved("TuneController.resume / Tuner._local_tuner._run_config", "give a resumed search its time budget",
                     str(e)) from None
    rc.stop = stopper
    set_restored_callback(tuner, type(callback), callback)
    _RESUME_BUDGET.update(stopper=stopper, reopen=reopen)  # for the next TuneController.resume in this process
    if getattr(resume, "_mmsa_budget", False):
        return

    def patched(self, *args, **kwargs):
        resume(self, *args, **kwargs)
        if not _RESUME_BUDGET:  # a resume without a budget
            return
        budget = dict(_RESUME_BUDGET)
        _RESUME_BUDGET.clear()
        if not hasattr(self, "_stopper") or (budget["reopen"] and not hasattr(self._search_alg, "_finished")):
            raise _moved("TuneController._stopper / SearchGenerator._finished", "give a resumed search its time budget")
        self._stopper = budget["stopper"]
        if budget["reopen"]:
            self._search_alg._finished = False

    patched._mmsa_budget = True
    patched._mmsa = getattr(resume, "_mmsa", False)  # relocate_new_trials_on_restore's patch stays on
    TuneController.resume = patched


_RESUME_BUDGET: dict = {}


def forget_resume_budget() -> None:
    _RESUME_BUDGET.clear()
