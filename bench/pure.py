"""The lower bound a training loop is compared with: the loop's own step code on batches made beforehand."""
from __future__ import annotations

import time

import torch

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from data_pipeline.batches import collate
from data_pipeline.preprocess import Prepared
from model.train import Trainer


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def pure_epoch(trainer: Trainer, data: Prepared, seed: int) -> float:
    """Seconds for Trainer.train_step over exactly the micro-batches (and augmentation draws) of
    trainer.run_epoch(data, train=True, seed=seed), collated and on the device before the clock starts: the
    epoch's work minus batching, host-to-device copies and metrics, so it can only be faster than the loop."""
    plan, gen = trainer.epoch_plan(data, True, seed)
    batches = [(trainer.to_device(collate(data, idx)), step_size, last) for idx, step_size, last in plan]
    trainer.model.train(True)
    sync(trainer.device)
    t = time.perf_counter()
    for b, step_size, last in batches:
        trainer.train_step(b, gen, step_size, last)
    sync(trainer.device)
    return time.perf_counter() - t
