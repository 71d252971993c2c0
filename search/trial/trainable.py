"""The Ray Tune trainable: the one training loop, reporting once per epoch with a checkpoint. How the checkpoint is
written (whole inside the report, or in the background) is the strategy of search/trial/checkpoint_strategy.py."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from model.config import Config
from model.train import Split, Trainer

from search.trial import checkpoint_strategy

from search.experiment import ray_internals
from search.trial.async_checkpoint import BYTES_PREV, FIRST_BATCH_S, OVERHEAD_S, PASS_S
from search.trial.ended_trial import finish_if_judged
from search.experiment.faults import batch_hook
from search.experiment.ray_internals import QUIET_LOGGERS
from search.settings.schema import FINISHED, REPORTED_AT
from search.selection.stats import encode_classes, val_predictions
from search.trial.trial_errors import TrialOutOfMemory, out_of_memory  # noqa: F401 - TrialOutOfMemory: defined there, named here
from search.trial.worker import trial_started, where_it_runs


def train_trial(config: dict, data: Split, checkpointing: dict | None = None) -> None:
    entered = time.perf_counter()
    cfg = Config.from_dict(config, source="trial config")  # Ray's dict -> typed configs, first thing
    from ray import tune

    started = trial_started(entered)
    ray_internals.let_previous_trial_finish_on_reuse()
    if finish_if_judged():  # finished before a crash that came before Ray saved that (search/trial/ended_trial.py)
        return None
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    saver = checkpoint_strategy.for_trial(checkpointing)

    trainer = Trainer(cfg, data)
    trainer.on_batch = batch_hook(cfg, tune.get_context().get_trial_id(), lambda: trainer.epoch)
    saver.attach(trainer)
    replay_until = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a resumed search or a retried trial continues after its last epoch
        with checkpoint.as_directory() as d:
            replay_until = saver.resume(Path(d))
    where = where_it_runs(trainer.device)
    labels = encode_classes(data.val.labels)
    overhead, last_bytes, stopped = 0.0, 0, False
    ready = time.perf_counter() - started  # the first batch starts now (FIRST_BATCH_S)
    try:
        epochs = trainer.fit()
        while True:
            t0, gate0 = time.perf_counter(), saver.gate_s
            row = next(epochs, None)
            if row is None:
                break
            t1 = time.perf_counter()
            gate = saver.gate_s - gate0  # snapshot time inside the first step: blocking, not training
            overhead += gate
            finished = trainer.done()
            saver.after_epoch(row, final=finished)
            if trainer.epoch <= replay_until:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                ck_dir = saver.checkpoint(row, Path(tmp))
                timing = {OVERHEAD_S: overhead, BYTES_PREV: saver.bytes_written - last_bytes, PASS_S: t1 - t0 - gate,
                          FIRST_BATCH_S: ready}
                last_bytes = saver.bytes_written
                preds = val_predictions(trainer.history, trainer.val_pred, labels)
                tune.report({**row, FINISHED: int(finished), REPORTED_AT: time.time(), **where, **timing, **preds},
                            checkpoint=tune.Checkpoint.from_directory(str(ck_dir)))
                saver.after_report()
            overhead = time.perf_counter() - t1
    except ray_internals.TRIAL_THREAD_STOPPED:  # after a report: ASHA stopped the trial, or the search is pausing
        stopped = True
        raise
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(cfg, trainer.device) from None
    finally:  # also when Ray ends the thread: the next trial may run in this process (warm worker), so the model
        # and optimizer are given back now
        saver.close(wait=not stopped)
        trainer.close()
