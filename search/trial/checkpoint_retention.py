"""Which trial checkpoints stay on storage: the best `keep_checkpoints` by val_loss plus the two newest.

Ray's own `CheckpointConfig(num_to_keep=...)` deletes the previous newest checkpoint the moment a better-scoring new
one is registered, before the experiment state that still names the old one as the trial's restore point is saved.
A crash in between leaves a search whose resume fails that trial ("Could not recover from checkpoint as it does not
exist on storage anymore"; seen in CI). So Ray keeps every checkpoint and a driver callback (search/tune/callbacks.py)
prunes, always sparing the two newest: the saved experiment state names one of them (Ray saves it after every step,
TUNE_GLOBAL_CHECKPOINT_S=0, and each result is its own step).

Each checkpoint carries METRICS_FILE (epoch, val_loss), written by the trainable, so the pruner needs no memory of
earlier results and works the same after `mmsa resume` and on URI storage.
"""
from __future__ import annotations

import json
from pathlib import Path

from search.settings.schema import M
from search.experiment.storage import parse_json

METRICS_FILE = "mmsa_metrics.json"
PIN_FILE = "mmsa_pinned.json"  # `mmsa export` during a running search: this checkpoint is never pruned
NEWEST_KEPT = 2  # the restore point the saved experiment state names is one of these


def to_delete(entries: dict[str, tuple[int, float]], keep: int) -> set[str]:
    """entries: checkpoint name -> (epoch, val_loss). The names outside the `keep` best and the NEWEST_KEPT newest."""
    # model/metrics.py best_index's order: the lowest finite loss, the earliest of equals; NaN/inf last
    by_loss = sorted(entries, key=lambda n: (M.finite(entries[n][1]) is None, M.finite(entries[n][1]) or 0.0,
                                             entries[n][0]))
    newest = sorted(entries, key=lambda n: entries[n][0], reverse=True)
    return set(entries) - set(by_loss[:keep]) - set(newest[:NEWEST_KEPT])


def write_checkpoint_metrics(ck_dir, epoch: int, val_loss: float) -> None:
    from data_pipeline.atomic import write_file

    write_file(Path(ck_dir) / METRICS_FILE, json.dumps({M.EPOCH: epoch, M.VAL_LOSS: val_loss}).encode())


def read_checkpoint_metrics(data: bytes | None) -> tuple[int, float] | None:
    """(epoch, val_loss) from a METRICS_FILE's bytes; None when it is absent or not whole."""
    m = parse_json(data)
    try:
        return int(m[M.EPOCH]), float(m[M.VAL_LOSS])
    except (ValueError, KeyError, TypeError, OverflowError):
        return None
