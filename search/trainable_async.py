"""The trainable with checkpoints written in the background (search.checkpoint_mode: async; the protocol is in
search/async_checkpoint.py). Same training loop and rows as search/trainable.py, plus a few timing keys."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch

from model.config import Config
from model.train import Split, Trainer

from . import ray_internals
from .async_checkpoint import (BYTES_PREV, FIRST_BATCH_S, OVERHEAD_S, PASS_S, AsyncCheckpointer, read_pointer)
from .faults import batch_hook
from .ray_internals import QUIET_LOGGERS
from .trial_errors import out_of_memory
from .schema import FINISHED, REPORTED_AT, M
from .stats import encode_classes, val_predictions
from .worker import where_it_runs


def train_trial_async(cfg: Config, data: Split, every: int, started: float) -> bool:
    """The trial, or False (nothing done) where the storage is not a local filesystem."""
    from ray import tune

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    fs, trial_path = ray_internals.trial_storage()
    if not isinstance(fs, pafs.LocalFileSystem):
        return False
    trainer = Trainer(cfg, data)
    trainer.on_batch = batch_hook(cfg, tune.get_context().get_trial_id(), lambda: trainer.epoch)
    ck = AsyncCheckpointer(trainer, trial_path, every)
    replay_until = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a resumed search or a retried trial continues after its last epoch
        with checkpoint.as_directory() as d:
            pointer = read_pointer(Path(d))
            if pointer is None:  # a whole checkpoint of sync mode (or of a search before async mode)
                trainer.load_checkpoint(Path(d))
        if pointer is not None:
            if pointer["state"] is not None:  # else: from the start, which the seed makes the same
                trainer.load_checkpoint(Path(trial_path) / pointer["state"])
            replay_until = pointer["reported_epoch"]  # Ray has these epochs' results: train them again silently
    where = where_it_runs(trainer.device)
    labels = encode_classes(data.val.labels)
    overhead, last_bytes, stopped = 0.0, 0, False
    ready = time.perf_counter() - started  # the first batch starts now (FIRST_BATCH_S)
    try:
        epochs = trainer.fit()
        while True:
            t0, gate0 = time.perf_counter(), ck.gate_s
            row = next(epochs, None)
            if row is None:
                break
            t1 = time.perf_counter()
            gate = ck.gate_s - gate0  # snapshot time inside the first step: blocking, not training
            passes = t1 - t0 - gate
            overhead += gate
            finished = trainer.done()
            ck.after_epoch(row, final=finished)
            if finished:  # the trial's last report: its best weights must be whole before Ray may end the worker
                ck.finish_best()
            if trainer.epoch <= replay_until:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                pointer_dir = ck.pointer(trainer.epoch, Path(tmp))
                extra = {OVERHEAD_S: overhead, BYTES_PREV: ck.bytes_written - last_bytes, PASS_S: passes,
                         FIRST_BATCH_S: ready}
                last_bytes = ck.bytes_written
                preds = val_predictions(trainer.history, trainer.val_pred, labels)
                tune.report({**row, FINISHED: int(finished), REPORTED_AT: time.time(), **where, **extra, **preds},
                            checkpoint=tune.Checkpoint.from_directory(str(pointer_dir)))
            ck.after_report()
            overhead = time.perf_counter() - t1
    except SystemExit:  # Ray ended the thread after a report: ASHA stopped the trial, or the search is pausing
        stopped = True
        raise
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(cfg, trainer.device) from None
    finally:  # the next trial may run in this process (warm worker): give back the model and optimizer now
        # A stopped trial's last best weights finish writing in the background while the next trial starts (the
        # driver's verdict is applied by the write itself, and the process waits for it before it exits).
        ck.close(wait=not stopped)
        trainer.close()
    return True
