"""Driver-side Tune callbacks: checkpoint pruning (search/checkpoints.py) and state backups (search/state_backup.py)."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyarrow.fs as pafs
from ray.tune import Callback

from .checkpoints import METRICS_FILE, read_metrics, to_delete
from .state_backup import backup, is_state_file, read_bytes

FAULT_ENV = "MMSA_TEST_FAULT_PRUNE"  # tests: SIGKILL the driver right after pruning at this epoch (the worst moment)
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
            metrics = read_metrics(read_bytes(fs, f"{d.path}/{METRICS_FILE}"))
            if metrics is not None:  # otherwise not one of ours, or not whole: leave it alone
                entries[d.path] = metrics
        for path in to_delete(entries, self.keep):
            fs.delete_dir(path)
        fault = os.environ.get(FAULT_ENV)
        if fault and entries and max(e for e, _ in entries.values()) == int(fault):
            os.kill(os.getpid(), signal.SIGKILL)


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
            self._copy(trials[0].storage)

    def on_experiment_end(self, trials, **info):
        if trials:
            self._copy(trials[0].storage)

    def _copy(self, storage) -> None:
        try:
            staging = Path(storage.experiment_driver_staging_path)
            files = {p.name: p.read_bytes() for p in staging.iterdir() if p.is_file() and is_state_file(p.name)}
            fs, exp = storage.storage_filesystem, storage.experiment_fs_path
            if "tuner.pkl" not in self._copied:  # written once, straight to storage, before the first step
                files["tuner.pkl"] = read_bytes(fs, f"{exp}/tuner.pkl") or b""
            changed = {n: d for n, d in files.items() if self._copied.get(n) != hash(d)}
            backup(fs, exp, changed)
            self._copied.update((n, hash(d)) for n, d in changed.items())
            self._dirty = False
        except Exception as e:  # noqa: BLE001 - a failed backup must not stop the search; the next step retries
            log.warning("could not back up the experiment state: %s", e)


def upload_state_after_each_checkpoint() -> None:
    """Ray uploads the experiment state in the background, skipping an upload while one is in flight, so the stored
    state can lag the checkpoints; a kill then restarts a trial from scratch and Ray overwrites its result.json
    (seen in CI). Ray's remedy is to force and wait for an upload every `num_to_keep` checkpoints of a trial; we set
    num_to_keep=None (CheckpointPruner above), so ask for that after every checkpoint. Ray has no public switch."""
    from ray.tune.execution import experiment_state as es

    init = es._ExperimentCheckpointManager.__init__
    if getattr(init, "_mmsa", False):
        return

    def patched(self, *args, sync_every_n_trial_checkpoints=None, **kwargs):
        init(self, *args, sync_every_n_trial_checkpoints=sync_every_n_trial_checkpoints or 1, **kwargs)

    patched._mmsa = True
    es._ExperimentCheckpointManager.__init__ = patched
