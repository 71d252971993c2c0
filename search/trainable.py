"""The Ray Tune trainable: the one training loop, reporting once per epoch with a checkpoint."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from model.config import Config
from model.train import Split, Trainer

from .checkpoint_retention import write_checkpoint_metrics
from .faults import batch_hook
from .ray_internals import QUIET_LOGGERS
from .schema import DEVICE, FINISHED, GPU_IDS, NODE_ID, REPORTED_AT, VAL_LABEL, VAL_PRED, M
from .stats import encode_classes


class TrialOutOfMemory(RuntimeError):
    """CUDA ran out of memory in a trial; the message says how to make the trial fit."""



def val_predictions(row: dict, pred, labels: str) -> dict:
    """The validation predictions to report with this epoch: only when it is the trial's best so far."""
    if pred is None or row[M.VAL_LOSS] > row[M.BEST_VAL_LOSS]:
        return {}
    return {VAL_PRED: encode_classes(pred), VAL_LABEL: labels}


def train_trial(config: dict, data: Split) -> None:
    cfg = Config.from_dict(config, source="trial config")  # Ray's dict -> typed configs, first thing
    import ray
    from ray import tune

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    trainer = Trainer(cfg, data)
    trainer.on_batch = batch_hook(cfg, tune.get_context().get_trial_id(), lambda: trainer.epoch)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a resumed search or a retried trial continues after its last epoch
        with checkpoint.as_directory() as d:
            trainer.load_checkpoint(Path(d))
    ctx = ray.get_runtime_context()
    where = {DEVICE: trainer.device.type, GPU_IDS: ",".join(str(g) for g in ray.get_gpu_ids()), NODE_ID: ctx.get_node_id()}
    labels = encode_classes(data.val.labels)
    try:
        for row in trainer.fit():
            finished = trainer.epoch >= cfg.train.epochs or trainer.should_stop()
            with tempfile.TemporaryDirectory() as tmp:
                ck = trainer.save_checkpoint(Path(tmp) / "checkpoint", include_best=False)
                write_checkpoint_metrics(ck, trainer.epoch, row[M.VAL_LOSS])
                preds = val_predictions(row, trainer.val_pred, labels)
                tune.report({**row, FINISHED: int(finished), REPORTED_AT: time.time(), **where, **preds},
                            checkpoint=tune.Checkpoint.from_directory(str(ck)))
    except torch.cuda.OutOfMemoryError:
        t = cfg.train
        micro = t.micro_batch_size or t.batch_size
        raise TrialOutOfMemory(
            f"CUDA out of memory at batch_size {t.batch_size} (micro-batch {micro}) on {trainer.device}: set "
            f"train.micro_batch_size to {max(1, micro // 2)} in the space file's fixed: section (gradient accumulation "
            f"keeps the effective batch of {t.batch_size}), or search smaller batch sizes"
        ) from None
