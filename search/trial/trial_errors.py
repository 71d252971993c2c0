"""Errors a trial raises with a fix in the message (search/trial/trainable.py)."""
from __future__ import annotations


class TrialOutOfMemory(RuntimeError):
    """CUDA ran out of memory in a trial; the message says how to make the trial fit."""


def out_of_memory(cfg, device) -> TrialOutOfMemory:
    t = cfg.train
    micro = t.micro_batch_size or t.batch_size
    return TrialOutOfMemory(
        f"CUDA out of memory at batch_size {t.batch_size} (micro-batch {micro}) on {device}: set "
        f"train.micro_batch_size to {max(1, micro // 2)} in the space file's fixed: section (gradient accumulation "
        f"keeps the effective batch of {t.batch_size}), or search smaller batch sizes"
    )
