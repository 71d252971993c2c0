"""Checkpoint folders pinned by `mmsa export` of earlier versions (PIN_FILE inside): the deleters (the trial's writer,
the driver's pruner and retention) still spare them, so an export file written then keeps naming a folder that
exists. Exports now copy the checkpoint instead (search/trial/exported.py): a pin checked by one process while
another deletes raced, a copy does not. No pin is written any more.
"""
from __future__ import annotations

from search.experiment import storage
from search.trial.checkpoint_retention import PIN_FILE


def pinned(fs, path: str, root: str | None = None) -> bool:
    """True also when storage cannot tell (throttled, a timeout): a pinned folder is never deleted on a blip."""
    try:
        return storage.is_file(fs, f"{path}/{PIN_FILE}", root)
    except OSError:
        return True


def delete_unpinned(fs, path: str, root: str | None = None) -> bool:
    """Delete the folder `path` unless pinned; whether it is gone. root: no link below it is followed on a local
    disk (the trial folder); a link planted under path's name is removed, never followed."""
    if pinned(fs, path, root):
        return False
    storage.delete_dir(fs, path, root)
    return True
