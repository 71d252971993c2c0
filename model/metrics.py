"""Metric names, defined once: the training loop emits them; search reporting, ASHA, export and plots read them."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names only: status and report read metric names without importing torch
    import torch

EPOCH = "epoch"  # 1-based epoch just finished
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
VAL_F1 = "val_macro_f1"
LR = "lr"  # learning rate used during the epoch
SPS = "samples_per_s"  # training samples per second of the epoch's training phase
BEST_VAL_LOSS = "best_val_loss"  # lowest val_loss up to this epoch
BEST_EPOCH = "best_epoch"  # the epoch that reached best_val_loss
EPOCH_METRICS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_ACC, VAL_F1, LR, SPS, BEST_VAL_LOSS, BEST_EPOCH)

# What "best" means everywhere (checkpoint retention, export, final training): the lowest validation loss.
OPT_METRIC = VAL_LOSS
OPT_MODE = "min"
# ASHA and Optuna compare trials by the best val loss reached so far, so one noisy epoch does not decide a rung.
SEARCH_METRIC = BEST_VAL_LOSS


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro F1 from a (true, predicted) confusion matrix; classes absent from both count as 0."""
    c = confusion.double()
    tp = c.diag()
    precision = tp / c.sum(0).clamp(min=1)
    recall = tp / c.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return float(f1.mean())
