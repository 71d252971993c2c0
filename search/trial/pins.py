"""`mmsa export` pins a checkpoint folder while the search may still run; the trial's writer and the driver's pruner
may be deleting that very folder at the same moment (an older best epoch, a pruned checkpoint_*, a finished trial's
weights). Neither side can lock the other (another process, another machine, object storage), so one protocol, on
local disks and object storage alike, decides who wins:

- the deleter: no pin -> takes the folder's METRICS_FILE away (the mark that a folder is whole) -> asks again: pinned
  now? then it puts METRICS_FILE back and keeps the folder; otherwise it deletes the rest.
- the pinner: writes the pin -> the folder is kept exactly when METRICS_FILE is there (asked a few times over a
  second or two: a deleter that saw the pin in its second look is putting the file back).

If the pinner sees METRICS_FILE after its pin is written, a deleter either took it away later (and then sees the pin
in its second look) or had put it back already; either way the folder stays. A pinner that does not see it takes its
pin away again and reports the folder gone. A deleter killed between its two looks leaves a folder without
METRICS_FILE, which retention deletes as half-written unless it is pinned.
"""
from __future__ import annotations

import json
import time

from search.experiment import storage
from search.trial.checkpoint_retention import METRICS_FILE, PIN_FILE

PIN_CHECKS_S = (0.0, 0.25, 0.5, 1.0)  # the pinner's looks for METRICS_FILE (a deleter puts it back in milliseconds)


def pinned(fs, path: str, root: str | None = None) -> bool:
    """True also when storage cannot tell (throttled, a timeout): a pinned folder is never deleted on a blip."""
    try:
        return storage.is_file(fs, f"{path}/{PIN_FILE}", root)
    except OSError:
        return True


def delete_unpinned(fs, path: str, root: str | None = None) -> bool:
    """Delete the folder `path` unless `mmsa export` pinned it; whether it was deleted (or was not there).
    root: no link below it is followed on a local disk (the trial folder)."""
    if not storage.exists(fs, path, root):
        return True
    if pinned(fs, path, root):
        return False
    marker = f"{path}/{METRICS_FILE}"
    whole = storage.read_bytes(fs, marker, root)
    if whole is not None:
        storage.delete_file(fs, marker, root)
        if pinned(fs, path, root):  # pinned between the two looks: the pinner waits for the marker to come back
            from data_pipeline.atomic import write_file

            write_file(marker, whole, fs, root)
            return False
    storage.delete_dir(fs, path, root)
    return True


def pin(fs, path: str, root: str | None = None) -> bool:
    """Pin the whole folder `path` (`mmsa export`): True when it is pinned and whole, False when it is gone or
    half-written (then no pin is left behind). OSError when the pin cannot be written (read-only storage)."""
    from data_pipeline.atomic import write_file

    if not storage.is_dir(fs, path, root):
        return False
    try:
        write_file(f"{path}/{PIN_FILE}", json.dumps({"pinned_by": "mmsa export", "at": time.time()}).encode(), fs,
                   root=root)
    except FileNotFoundError:  # deleted under us
        return False
    for wait in PIN_CHECKS_S:
        time.sleep(wait)
        if storage.is_file(fs, f"{path}/{METRICS_FILE}", root):
            return True
    storage.delete_file(fs, f"{path}/{PIN_FILE}", root)
    storage.remove_empty_dir(fs, path, root)  # the pin alone, written into a folder deleted meanwhile
    return False
