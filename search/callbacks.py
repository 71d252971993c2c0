"""Driver-side Tune callbacks: checkpoint pruning (search/checkpoint_retention.py) and state backups
(search/state_backup.py)."""
from __future__ import annotations

import logging

import pyarrow.fs as pafs
from ray.tune import Callback

from . import faults, ray_internals
from .checkpoint_retention import METRICS_FILE, read_checkpoint_metrics, to_delete
from .state_backup import backup
from .storage import read_bytes

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
            metrics = read_checkpoint_metrics(read_bytes(fs, f"{d.path}/{METRICS_FILE}"))
            if metrics is not None:  # otherwise not one of ours, or not whole: leave it alone
                entries[d.path] = metrics
        for path in to_delete(entries, self.keep):
            fs.delete_dir(path)
        if entries:
            faults.after_pruning(max(e for e, _ in entries.values()))


class StateBackup(Callback):
    """After each step whose events changed the experiment state (Ray has saved it by on_step_end), copy the
    staged state files into the experiment's backup folder."""

    def __init__(self):
        self._dirty = True
        self._copied: dict[str, int] = {}  # name -> hash of the bytes last backed up: unchanged files are skipped

    def _mark(self, *args, **kwargs):
        self._dirty = True

    on_trial_start = on_trial_restore = on_trial_save = on_trial_result = on_checkpoint = _mark
    on_trial_complete = on_trial_error = on_trial_recover = _mark

    def on_step_end(self, iteration, trials, **info):
        if self._dirty and trials:
            self._copy(trials[0])

    def on_experiment_end(self, trials, **info):
        if trials:
            self._copy(trials[0])

    def _copy(self, trial) -> None:
        try:
            files, fs, exp = ray_internals.driver_state_files(trial)
            if "tuner.pkl" not in self._copied:  # written once, straight to storage, before the first step
                files["tuner.pkl"] = read_bytes(fs, f"{exp}/tuner.pkl") or b""
            changed = {n: d for n, d in files.items() if self._copied.get(n) != hash(d)}
            backup(fs, exp, changed)
            self._copied.update((n, hash(d)) for n, d in changed.items())
            self._dirty = False
        except Exception as e:  # noqa: BLE001 - a failed backup must not stop the search; the next step retries
            log.warning("could not back up the experiment state: %s", e)

