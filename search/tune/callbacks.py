"""Driver-side Tune callbacks: checkpoint pruning (search/trial/checkpoint_retention.py) and state backups
(search/experiment/state_backup.py)."""
from __future__ import annotations

import logging
import os
import signal

import pyarrow.fs as pafs
from ray.tune import Callback

from search.experiment import faults, ray_internals, trial_backup
from search.settings.schema import M
from search.trial.object_store import ObjectStoreFolder
from search.trial import pins
from search.trial.checkpoint_retention import METRICS_FILE, read_checkpoint_metrics, to_delete
from search.experiment.layout import trial_dirname
from search.experiment.state_backup import backup
from search.experiment.storage import read_bytes
from search.settings.schema import TERMINATED

log = logging.getLogger(__name__)


class CheckpointPruner(Callback):
    def __init__(self, keep: int):
        self.keep = keep

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        try:
            self._prune(checkpoint)
        except Exception as e:  # noqa: BLE001 - Ray would skip registering the checkpoint: never fail a trial here
            log.warning("could not prune old checkpoints next to %s: %s", checkpoint.path, e)

    def _prune(self, checkpoint) -> None:
        fs, parent = checkpoint.filesystem, checkpoint.path.rstrip("/").rsplit("/", 1)[0]
        entries = {}
        for d in fs.get_file_info(pafs.FileSelector(parent)):
            if d.type != pafs.FileType.Directory or not d.base_name.startswith("checkpoint_"):
                continue
            # no link followed below the trial: a planted checkpoint_* -> elsewhere is never one of ours to delete
            metrics = read_checkpoint_metrics(read_bytes(fs, f"{d.path}/{METRICS_FILE}", parent))
            if metrics is not None and not pins.pinned(fs, d.path, parent):
                # otherwise not one of ours, not whole, or pinned by an export: leave it alone
                entries[d.path] = metrics
        for path in to_delete(entries, self.keep):
            pins.delete_unpinned(fs, path, parent)  # an export may be pinning it right now
        if entries:
            faults.after_pruning(max(e for e, _ in entries.values()))


class StateBackup(Callback):
    """After each step whose events changed the experiment state (Ray has saved it by on_step_end), copy the
    staged state files into the experiment's backup folder; after each trial start and result, write whole copies
    of the trial's params.json and result.json (search/experiment/trial_backup.py)."""

    def __init__(self):
        self._trial = None  # any trial: they all carry the experiment's storage
        self._dirty = True
        self._copied: dict[str, int] = {}  # name -> hash of the bytes last backed up: unchanged files are skipped

    def _mark(self, *args, **kwargs):
        self._dirty = True

    on_trial_restore = on_trial_save = on_checkpoint = _mark
    on_trial_complete = on_trial_error = on_trial_recover = _mark

    def on_trial_start(self, iteration, trials, trial, **info):
        self._dirty = True
        self._trial_copy(trial, lambda fs, exp, d: trial_backup.save_params(fs, exp, d, trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._dirty = True
        row = {k: v for k, v in result.items() if k != "config"}
        self._trial_copy(trial, lambda fs, exp, d: trial_backup.save_result(fs, exp, d, row))

    def _trial_copy(self, trial, write) -> None:
        try:
            _, fs, exp = ray_internals.driver_state_files(trial, files=False)
            write(fs, exp, trial_dirname(trial))
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: the previous whole copy stays; never fail a trial
            log.warning("could not back up the results of trial %s: %s", trial.trial_id, e)

    def on_step_end(self, iteration, trials, **info):
        if trials:
            self._trial = trials[0]
            if self._dirty:
                self._copy(trials[0])

    def on_experiment_end(self, trials, **info):
        if trials:
            self._copy(trials[0])

    def flush(self) -> None:
        """After Tuner.fit returned (also when Ctrl-C or SIGTERM stopped it): Ray's last state snapshot."""
        if self._trial is not None:
            self._copy(self._trial)

    def _copy(self, trial) -> None:
        try:
            files, fs, exp = ray_internals.driver_state_files(trial)
            tuner_file = ray_internals.TUNER_FILE
            if tuner_file not in self._copied:  # written once, straight to storage, before the first step
                files[tuner_file] = read_bytes(fs, f"{exp}/{tuner_file}") or b""
            changed = {n: d for n, d in files.items() if self._copied.get(n) != hash(d)}
            backup(fs, exp, changed)
            self._copied.update((n, hash(d)) for n, d in changed.items())
            self._dirty = False
        except Exception as e:  # noqa: BLE001 - a failed backup must not stop the search; the next step retries
            log.warning("could not back up the experiment state: %s", e)



class StopWhenStorageFull(Callback):
    """A full storage disk fails every checkpoint and state upload from then on (Ray retries trials and logs each
    failed sync): stop the search the way Ctrl-C does, so trials stay resumable, and let the CLI say why
    (search/tune/tuner.py)."""

    def __init__(self, exp: str):
        self.exp = exp
        self._sent = False

    @property
    def stopped_full(self) -> bool:
        return getattr(self, "_sent", False)

    def on_step_end(self, iteration, trials, **info):
        from search.experiment.storage import MIN_FREE_BYTES, free_bytes

        free = free_bytes(self.exp)
        if not self._sent and free is not None and free < MIN_FREE_BYTES:
            self._sent = True
            log.warning("the storage of %s is full (%.1f MiB free): stopping the search", self.exp, free / 2**20)
            os.kill(os.getpid(), signal.SIGINT)


def follow_search_metric(callbacks: list, metric: str) -> None:
    """Restored callbacks (tuner.pkl) rank by the search's metric: a TrialRetention pickled before it had one would
    keep the best weights of the lowest-val-loss trials of a val_acc search."""
    for cb in callbacks:
        if isinstance(cb, TrialRetention):
            cb.metric = metric


class TrialRetention(Callback):
    """What a trial leaves on storage once it ends (checkpoint_mode async, search/trial/async_checkpoint.py): its full
    training state goes (a finished trial is not continued); its best-epoch weights stay only for the
    `keep_best_trials` best finished trials (by search.metric's best value), and for any that `mmsa export` pinned. Errored
    trials keep everything: `mmsa resume` retries them from their state."""

    def __init__(self, keep_best_trials: int, metric: str = M.VAL_LOSS):
        self.keep = keep_best_trials
        self.metric = metric  # search.metric: which finished trials are the best
        self._last: list[tuple[str, float]] = []
        self._applied: dict[str, bool] = {}  # trial folder -> verdict applied this driver run (a resume sweeps all once)

    def _objective(self) -> M.Objective:
        return M.objective(getattr(self, "metric", None))  # a callback pickled before search.metric: val loss

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Deleted now, before Ray saves the state that says the trial finished: a trial restored from an older
        # saved state finds the verdict and ends without training (search/trial/ended_trial.py).
        self._apply([t for t in trials if t.status == TERMINATED and t is not trial] + [trial])
        self._finished = getattr(self, "_finished", 0) + 1
        faults.after_retention(self._finished)

    def on_experiment_end(self, trials, **info):
        # Not every TERMINATED trial: after Ctrl-C or SIGTERM, Ray's clean-up marks the trials it stops TERMINATED
        # before this call, although they continue on resume from the state their last report named. Only the
        # trials known finished (on_trial_complete, which that clean-up does not call) are swept again.
        self._retain(getattr(self, "_last", []))

    def flush(self) -> None:
        """Once Tuner.fit has returned (every worker gone): once more, for what workers that exited while writing
        left after the last sweep."""
        self._retain(getattr(self, "_last", []), half_written=True)  # a callback pickled by an older version: []

    def _apply(self, done: list) -> None:
        try:
            paths = []
            for t in done:
                fs, path = ray_internals.driver_trial_path(t)
                best = (t.last_result or {}).get(self._objective().running, float("nan"))
                folder = path if isinstance(fs, pafs.LocalFileSystem) else ObjectStoreFolder(fs, path)
                paths.append((folder, float(best) if isinstance(best, (int, float)) else float("nan")))
        except Exception as e:  # noqa: BLE001 - never fail the search over clean-up; the next end retries
            log.warning("could not list the finished trials' folders: %s", e)
            return
        self._last = paths
        if not hasattr(self, "_applied"):  # a callback pickled by an older version
            self._applied = {}
        self._retain(paths, applied=self._applied)  # only the trial that ended and any that left the top are touched

    def _retain(self, paths: list[tuple[str, float]], half_written: bool = False, applied: dict | None = None) -> None:
        from search.trial.async_checkpoint import retain_finished

        try:
            retain_finished(paths, self.keep, half_written, self._objective(), applied)
        except Exception as e:  # noqa: BLE001 - never fail the search over clean-up; the next end retries
            log.warning("could not delete the training state of finished trials: %s", e)
