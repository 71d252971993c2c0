"""Whole copies of Ray's experiment-state files, so a search killed while Ray was copying them can still resume.

Ray writes its state (trial table, searcher, tuner) to a driver-local staging folder and copies it to the storage
folder in a background thread, truncating each file and rewriting it in place; `tuner.pkl` is written in place
too. A SIGKILL (OOM killer, preempted node) during a copy leaves an empty or cut-off file, and `Tuner.restore`
then fails with "EOFError: Ran out of input" or a JSON error (seen in this project's tests; ray-project/ray#58179).

search/tune/callbacks.py's StateBackup copies the last complete state into BACKUP_DIR after each step that changed it,
each file written under a temporary name and then renamed; `mmsa resume` runs `repair` first, which puts a backup
back wherever the live file is missing or damaged. Ray restores only the top level of the experiment folder, so it
never reads or rewrites BACKUP_DIR. Each backup is signed (search/experiment/state_trust.py), and `verify` puts the signed copy
back wherever a live file is not the one this user's search wrote, so Ray never unpickles a foreign file.
"""
from __future__ import annotations

import fnmatch
import json
import pickletools

import pyarrow.fs as pafs

from data_pipeline.atomic import write_file

from search.experiment import ray_internals, state_trust
from search.experiment.ray_internals import STATE_FILE_PATTERNS, is_state_file
from search.experiment.storage import create_dir, read_bytes

BACKUP_DIR = ".mmsa-state"
__all__ = ["BACKUP_DIR", "is_state_file", "intact", "backup", "repair", "damaged", "verify"]


def intact(name: str, data: bytes) -> bool:
    """Whether a state file is whole: JSON that parses, or a pickle whose opcodes run to STOP (read, not executed).
    Ray names some pickles .json (search_gen_state-*.json), so both are tried."""
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        ops = list(pickletools.genops(data))
        return bool(ops) and ops[-1][0].name == "STOP"
    except Exception:  # noqa: BLE001 - any parse failure means a damaged file
        return False


def backup(fs, exp_path: str, files: dict[str, bytes]) -> None:
    """Store whole copies of `files` (name -> bytes), signed; damaged ones are skipped, keeping the previous copy.
    Only bytes this process's own search produced may come here: signing them vouches for them."""
    create_dir(fs, f"{exp_path}/{BACKUP_DIR}", exp_path)
    whole = {n: d for n, d in files.items() if is_state_file(n) and intact(n, d)}
    if whole:
        state_trust.add_signatures(fs, f"{exp_path}/{BACKUP_DIR}", whole)
    for name, data in whole.items():
        write_file(f"{exp_path}/{BACKUP_DIR}/{name}", data, fs, root=exp_path)


def repair(fs, exp_path: str) -> list[str]:
    """Put a backup back wherever the live state file is missing or damaged; returns the names repaired."""
    root = f"{exp_path}/{BACKUP_DIR}"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    repaired = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name
        if info.type != pafs.FileType.File or not is_state_file(name):
            continue
        live = read_bytes(fs, f"{exp_path}/{name}")
        if live is not None and intact(name, live):
            continue
        saved = read_bytes(fs, info.path, exp_path)
        if saved is not None and intact(name, saved):
            write_file(f"{exp_path}/{name}", saved, fs)
            repaired.append(name)
    return sorted(repaired)


def damaged(fs, exp_path: str) -> list[str]:
    """The state files Ray would read on restore (the newest of each kind) that are empty or cut off."""
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(exp_path)) if i.type == pafs.FileType.File]
    newest = [ray_internals.newest(m) for p in STATE_FILE_PATTERNS if (m := fnmatch.filter(names, p))]
    return sorted(n for n in newest if not intact(n, read_bytes(fs, f"{exp_path}/{n}") or b""))


def verify(fs, exp_path: str, trust: bool = False) -> tuple[list[str], list[str]]:
    """Make every live state file one this user's search signed: keep it, put the signed backup back, or (trust)
    sign it as it is. Returns (names put back from the backup, names that have no signed copy)."""
    root = f"{exp_path}/{BACKUP_DIR}"
    sigs = state_trust.read_signatures(fs, root)
    restored, unsigned = [], []
    for name in state_trust.live_state_files(fs, exp_path):
        live = read_bytes(fs, f"{exp_path}/{name}")
        if state_trust.signed(sigs, name, live):
            continue
        if trust and live is not None and intact(name, live):
            backup(fs, exp_path, {name: live})
            continue
        saved = read_bytes(fs, f"{root}/{name}", exp_path)
        if state_trust.signed(sigs, name, saved) and intact(name, saved):
            write_file(f"{exp_path}/{name}", saved, fs)
            restored.append(name)
        else:
            unsigned.append(name)
    return restored, unsigned
