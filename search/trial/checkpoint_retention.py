"""Which trial checkpoints stay on storage: the best `keep_checkpoints` by the trial's objective (train.select_metric,
which a search sets to search.metric) plus the two newest.

Ray's own `CheckpointConfig(num_to_keep=...)` deletes the previous newest checkpoint the moment a better-scoring new
one is registered, before the experiment state that still names the old one as the trial's restore point is saved.
A crash in between leaves a search whose resume fails that trial ("Could not recover from checkpoint as it does not
exist on storage anymore"; seen in CI). So Ray keeps every checkpoint and a driver callback (search/tune/callbacks.py)
prunes, always sparing the two newest: the saved experiment state names one of them (Ray saves it after every step,
TUNE_GLOBAL_CHECKPOINT_S=0, and each result is its own step).

Each checkpoint carries METRICS_FILE (epoch, the objective's name and value), written by the trainable, so the pruner needs no memory of
earlier results and works the same after `mmsa resume` and on URI storage.
"""
from __future__ import annotations

import json
from pathlib import Path

from search.settings.schema import M
from search.experiment.storage import parse_json

METRICS_FILE = "mmsa_metrics.json"
PIN_FILE = "mmsa_pinned.json"  # `mmsa export` during a running search: this checkpoint is never pruned
METRIC = "metric"  # METRICS_FILE: the objective's name (its value is under that name)
NEWEST_KEPT = 2  # the restore point the saved experiment state names is one of these


def to_delete(entries: dict[str, tuple[int, float]], keep: int) -> set[str]:
    """entries: checkpoint name -> (epoch, sort key: smaller is better, Objective.key). The names outside the `keep`
    best and the NEWEST_KEPT newest."""
    # model/metrics.py best_index's order: the best finite value, the earliest of equals; NaN/inf last
    by_loss = sorted(entries, key=lambda n: (M.finite(entries[n][1]) is None, M.finite(entries[n][1]) or 0.0,
                                             entries[n][0]))
    newest = sorted(entries, key=lambda n: entries[n][0], reverse=True)
    return set(entries) - set(by_loss[:keep]) - set(newest[:NEWEST_KEPT])


def write_checkpoint_metrics(ck_dir, epoch: int, objective: M.Objective, value: float) -> None:
    """value: the epoch's objective.metric (its row's value; NaN when not known)."""
    from data_pipeline.atomic import write_file

    write_file(Path(ck_dir) / METRICS_FILE,
               json.dumps({M.EPOCH: epoch, METRIC: objective.metric, objective.metric: value}).encode())


def read_checkpoint_metrics(data: bytes | None) -> tuple[int, float] | None:
    """(epoch, sort key of the objective's value: smaller is better) from a METRICS_FILE's bytes; None when it is
    absent, not whole, or names no known objective. A file without METRIC (before train.select_metric): val_loss."""
    m = parse_json(data)
    try:
        name = m.get(METRIC, M.VAL_LOSS)
        if name not in M.OBJECTIVES:
            return None
        return int(m[M.EPOCH]), M.OBJECTIVES[name].key(float(m[name]))
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError):
        return None
