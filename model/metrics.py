"""Metric names and the search objective, defined once: the training loop emits them; search reporting, ASHA,
Optuna, export and plots read them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data_pipeline.labels import LABELS

if TYPE_CHECKING:  # names only: status and report read metric names without importing torch
    import torch

EPOCH = "epoch"  # 1-based epoch just finished
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
VAL_F1 = "val_macro_f1"  # mean of the classes' F1: the rare neutral class weighs as much as the others
VAL_WF1 = "val_weighted_f1"  # F1 weighted by class frequency: what MVSA papers call "F1"
VAL_RECALL = {label: f"val_recall_{label}" for label in LABELS}  # share of each class's rows predicted right
LR = "lr"  # learning rate used during the epoch
SPS = "samples_per_s"  # training samples per second of the epoch's training phase
BEST_VAL_LOSS = "best_val_loss"  # lowest val_loss up to this epoch
BEST_VAL_ACC = "best_val_acc"  # highest val_acc up to this epoch
BEST_VAL_F1 = "best_val_macro_f1"  # highest val_macro_f1 up to this epoch
BEST_EPOCH = "best_epoch"  # the epoch that reached best_val_loss
EPOCH_METRICS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_ACC, VAL_F1, VAL_WF1, *VAL_RECALL.values(), LR, SPS, BEST_VAL_LOSS,
                 BEST_VAL_ACC, BEST_VAL_F1, BEST_EPOCH)
# The validation metrics shown next to each other in status, report and export.
VAL_METRICS = (VAL_LOSS, VAL_ACC, VAL_F1, VAL_WF1, *VAL_RECALL.values())


def finite(v) -> float | None:
    """v as a finite number, else None: NaN, +-inf, a missing value, a bool or text (a hand-edited result file)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def best_index(values: list, mode: str) -> int | None:
    """THE rule for the best epoch of a curve ("min" or "max" mode), used by every reader: the trainer's best weights
    and best_epoch, a search trial's best-weights folder (search/trial/async_checkpoint.py), the epochs whose validation
    predictions a trial keeps (search/selection/stats.py), a trial's best row (search/selection/results.py) and `mmsa confirm`'s epoch
    count. The FIRST epoch reaching the best value wins a tie: the shortest training that reaches it, and the epoch
    that result.json's best_epoch and `mmsa export` named before this rule was written once. NaN, +-inf and
    non-numbers are never best; None when no value is finite."""
    best: int | None = None
    for i, v in enumerate(values):
        v = finite(v)
        if v is not None and (best is None or (v < values[best] if mode == "min" else v > values[best])):
            best = i
    return best


@dataclass(frozen=True)
class Objective:
    """What a search optimises: `metric` per epoch (a trial's best epoch, export, confirm), `mode`, and `running`,
    the best-so-far value ASHA and Optuna compare (one noisy epoch does not decide a rung)."""

    metric: str
    mode: str  # "min" or "max"
    running: str

    def value(self, row: dict | None) -> float | None:
        """The row's metric as a finite number, else None (a diverged epoch, or a row from before the metric)."""
        return finite((row or {}).get(self.metric))

    def key(self, value: float) -> float:
        """Sort key: smaller is better, whatever the mode."""
        return value if self.mode == "min" else -value

    def best_row(self, rows: list[dict]) -> dict | None:
        """The best row by `best_index` (the earliest of equals); a NaN or missing metric is never best."""
        i = best_index([self.value(r) for r in rows], self.mode)
        return None if i is None else rows[i]

    def best_index(self, values: list[float]) -> int:
        """Index of the best finite value of a curve by `best_index` (0 when none is finite)."""
        i = best_index(values, self.mode)
        return 0 if i is None else i

    def is_best(self, rows: list[dict]) -> bool:
        """Whether the last row is the best so far by `best_index`: better than every earlier one, and finite."""
        return bool(rows) and best_index([self.value(r) for r in rows], self.mode) == len(rows) - 1


OBJECTIVES = {o.metric: o for o in (Objective(VAL_LOSS, "min", BEST_VAL_LOSS), Objective(VAL_ACC, "max", BEST_VAL_ACC),
                                    Objective(VAL_F1, "max", BEST_VAL_F1))}
DEFAULT_OBJECTIVE = OBJECTIVES[VAL_LOSS]
# The default objective's names, for readers that have no search setting (final training's best epoch, checkpoints).
OPT_METRIC = DEFAULT_OBJECTIVE.metric
OPT_MODE = DEFAULT_OBJECTIVE.mode
SEARCH_METRIC = DEFAULT_OBJECTIVE.running


def objective(name: str | None) -> Objective:
    """The objective a search setting names (None: the default, for searches from before the setting)."""
    return OBJECTIVES.get(name or VAL_LOSS, DEFAULT_OBJECTIVE)


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1, weighted-F1 and each class's recall (metric names as keys) from a (true, predicted)
    confusion matrix; a class absent from both counts as F1 0 in the macro mean, recall 0 when it has no rows."""
    c = confusion.double()
    tp = c.diag()
    support = c.sum(1)
    n = float(support.sum())
    precision = tp / c.sum(0).clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    out = {VAL_ACC: float(tp.sum()) / max(n, 1.0), VAL_F1: float(f1.mean()),
           VAL_WF1: float((f1 * support).sum()) / max(n, 1.0)}
    out.update({VAL_RECALL[label]: float(recall[i]) for i, label in enumerate(LABELS)})
    return out


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro F1 from a (true, predicted) confusion matrix; classes absent from both count as 0."""
    return classification_metrics(confusion)[VAL_F1]
