"""How a trial's checkpoints are written, a strategy given to the one trainable (search/trial/trainable.py):

- SyncCheckpoints (search.checkpoint_mode: sync): the whole training state is written into the checkpoint reported
  with each epoch's result, and Ray copies it to storage inside `tune.report`.
- BackgroundCheckpoints (async, the default): the state is written into the trial's folder while the next epoch
  trains, and the reported checkpoint is a pointer to it (search/trial/async_checkpoint.py). On object storage
  (s3://, gs://) each folder is written on the worker's disk and uploaded whole in the background before a pointer
  names it (search/trial/object_store.py).

Both write what Trainer.training_state() returns, so a key added there is in every checkpoint."""
from __future__ import annotations

import tempfile
from pathlib import Path

from search.trial.async_checkpoint import AsyncCheckpointer, read_pointer, state_epoch
from search.trial.checkpoint_retention import write_checkpoint_metrics
from search.trial.object_store import ObjectStoreFolder


class SyncCheckpoints:
    """The whole state inside each reported checkpoint (the behaviour before search.checkpoint_mode)."""

    gate_s = 0.0  # never blocks training between the epoch's passes

    def __init__(self):
        self.trainer = None
        self.bytes_written = 0
        self._last: Path | None = None

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def resume(self, ck_dir: Path) -> int:
        """Load the reported checkpoint; the number of epochs to train again without reporting (none here)."""
        self.trainer.load_checkpoint(ck_dir)
        return 0

    def after_epoch(self, row: dict, final: bool) -> None:
        pass  # everything is written at the report

    def checkpoint(self, row: dict, tmp: Path) -> Path:
        ck = self.trainer.save_checkpoint(tmp / "checkpoint", include_best=False)
        obj = self.trainer.objective
        write_checkpoint_metrics(ck, self.trainer.epoch, obj, row[obj.metric])
        self._last = ck
        return ck

    def after_report(self) -> None:
        """Inside the report's temporary folder: what this epoch's checkpoint weighed (the next row's BYTES_PREV)."""
        self.bytes_written += sum(f.stat().st_size for f in self._last.iterdir())

    def close(self, wait: bool = True) -> None:
        pass


class BackgroundCheckpoints:
    """The state written in the background into the trial's folder; a pointer reported (search/trial/async_checkpoint.py)."""

    def __init__(self, trial_path: str, every: int, fs=None):
        """fs: the trial folder's pyarrow filesystem when it is object storage (None: a local path)."""
        self.remote = None if fs is None else ObjectStoreFolder(fs, trial_path)
        # on object storage: a private staging folder on this worker's disk, uploaded from
        self.trial_path = Path(trial_path) if fs is None else staging_folder()
        self.every = every
        self.trainer = None
        self.ck: AsyncCheckpointer | None = None

    def attach(self, trainer) -> None:
        self.trainer = trainer
        self.ck = AsyncCheckpointer(trainer, self.trial_path, self.every, self.remote)

    @property
    def gate_s(self) -> float:
        return self.ck.gate_s

    @property
    def bytes_written(self) -> int:
        return self.ck.bytes_written

    def resume(self, ck_dir: Path) -> int:
        pointer = read_pointer(ck_dir)
        if pointer is None:  # a whole checkpoint of sync mode (or of a search before async mode)
            self.trainer.load_checkpoint(ck_dir)
            return 0
        if pointer["state"] is not None:  # else: from the start, which the seed makes the same
            state = self.trial_path / pointer["state"]
            if self.remote is not None:  # the named state is whole on storage (uploaded before the pointer)
                self.remote.download(pointer["state"], state)
            self.trainer.load_checkpoint(state)
            if self.remote is not None:  # 1.5 GiB at real size: the local copy is not needed once loaded
                import shutil

                shutil.rmtree(state, ignore_errors=True)
            # the next pointers name this state until a newer one is whole (with checkpoint_every > 1 none may be
            # for a while: a second failure then resumes from here, not from the start)
            self.ck.complete = state_epoch(pointer["state"])
        return pointer["reported_epoch"]  # Ray has these epochs' results: train them again silently

    def after_epoch(self, row: dict, final: bool) -> None:
        self.ck.after_epoch(row, final=final)
        if final:  # the trial's last report: its best weights must be whole before Ray may end the worker
            self.ck.finish_best()

    def checkpoint(self, row: dict, tmp: Path) -> Path:
        return self.ck.pointer(self.trainer.epoch, tmp)

    def after_report(self) -> None:
        self.ck.after_report()

    def close(self, wait: bool = True) -> None:
        # A stopped trial's last best weights finish writing in the background while the next trial starts (the
        # driver's verdict is applied by the write itself, and the process waits for it before it exits).
        if self.ck is not None:
            self.ck.close(wait=wait)


STAGING_PREFIX = "mmsa-trial-"


def staging_prefix() -> str:
    """mmsa-trial-HOST-: a TMPDIR shared by machines (NFS, a shared volume) holds every host's folders, and a process
    id means something on its own host only."""
    import re
    import socket

    return f"{STAGING_PREFIX}{re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname())[:64]}-"


def staging_folder() -> Path:
    """A private folder on this worker's disk for a trial whose folder is on object storage, named by the host and
    process that own it. Ray kills a search's last workers outright when the search ends, so a folder can outlive its
    process: this host's folders of processes that no longer exist are deleted here, at the next trial's start."""
    import os
    import shutil

    root, mine = Path(tempfile.gettempdir()), staging_prefix()
    for old in root.glob(f"{mine}*-*"):
        try:
            pid = int(old.name[len(mine):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, OverflowError, OSError):  # not ours (any name can be planted in /tmp), or another user's
            continue
    return Path(tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-"))


def for_trial(checkpointing: dict | None) -> SyncCheckpoints | BackgroundCheckpoints:
    """The strategy for this trial: search.checkpoint_mode (tuner.py), on local storage or object storage alike."""
    import pyarrow.fs as pafs

    from search.experiment import ray_internals

    mode = checkpointing or {"checkpoint_mode": "sync"}  # sync: the behaviour before search.checkpoint_mode
    if mode["checkpoint_mode"] == "async":
        fs, trial_path = ray_internals.trial_storage()
        every = int(mode.get("checkpoint_every", 1))
        if isinstance(fs, pafs.LocalFileSystem):
            return BackgroundCheckpoints(trial_path, every)
        return BackgroundCheckpoints(trial_path, every, fs)
    return SyncCheckpoints()
