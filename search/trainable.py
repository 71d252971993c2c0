"""The Ray Tune trainable: the one training loop, reporting once per epoch with a checkpoint."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from model.config import Config
from model.train import Split, Trainer

from .async_checkpoint import BYTES_PREV, FIRST_BATCH_S, OVERHEAD_S, PASS_S
from .checkpoint_retention import write_checkpoint_metrics
from .ended_trial import finish_if_judged
from .faults import batch_hook
from . import ray_internals
from .ray_internals import QUIET_LOGGERS
from .schema import FINISHED, REPORTED_AT, M
from .stats import encode_classes, val_predictions
from .trial_errors import TrialOutOfMemory, out_of_memory  # noqa: F401 - TrialOutOfMemory: defined there, named here
from .worker import trial_started, where_it_runs


def train_trial(config: dict, data: Split, checkpointing: dict | None = None) -> None:
    entered = time.perf_counter()
    cfg = Config.from_dict(config, source="trial config")  # Ray's dict -> typed configs, first thing
    from ray import tune

    started = trial_started(entered)
    ray_internals.let_previous_trial_finish_on_reuse()
    if finish_if_judged():  # finished before a crash that came before Ray saved that (search/ended_trial.py)
        return None

    mode = checkpointing or {"checkpoint_mode": "sync"}  # sync: the behaviour before search.checkpoint_mode
    if mode["checkpoint_mode"] == "async":
        from .trainable_async import train_trial_async

        if train_trial_async(cfg, data, int(mode.get("checkpoint_every", 1)), started):
            return None
        # URI storage: Ray uploads the whole checkpoint (sync mode)

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    trainer = Trainer(cfg, data)
    trainer.on_batch = batch_hook(cfg, tune.get_context().get_trial_id(), lambda: trainer.epoch)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a resumed search or a retried trial continues after its last epoch
        with checkpoint.as_directory() as d:
            trainer.load_checkpoint(Path(d))
    where = where_it_runs(trainer.device)
    labels = encode_classes(data.val.labels)
    timing = {OVERHEAD_S: 0.0, BYTES_PREV: 0}  # the same timing keys as async mode (bench/search_overhead.py)
    ready = time.perf_counter() - started  # the first batch starts now (FIRST_BATCH_S)
    try:
        epochs = trainer.fit()
        while True:
            t0 = time.perf_counter()
            row = next(epochs, None)
            if row is None:
                break
            t1 = time.perf_counter()
            timing.update({PASS_S: t1 - t0, FIRST_BATCH_S: ready})
            finished = trainer.done()
            with tempfile.TemporaryDirectory() as tmp:
                ck = trainer.save_checkpoint(Path(tmp) / "checkpoint", include_best=False)
                write_checkpoint_metrics(ck, trainer.epoch, row[M.VAL_LOSS])
                preds = val_predictions(trainer.history, trainer.val_pred, labels)
                tune.report({**row, FINISHED: int(finished), REPORTED_AT: time.time(), **where, **timing, **preds},
                            checkpoint=tune.Checkpoint.from_directory(str(ck)))
                size = sum(f.stat().st_size for f in ck.iterdir())
            timing = {OVERHEAD_S: time.perf_counter() - t1, BYTES_PREV: size}
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(cfg, trainer.device) from None
    finally:  # also when Ray ends the thread (ASHA stopped the trial): the next trial may run in this process
        trainer.close()
