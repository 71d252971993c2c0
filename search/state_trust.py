"""Ray's state files are pickles (tuner.pkl, searcher-state-*.pkl, search_gen_state-*.json) or JSON with pickled
parts (experiment_state-*.json), and `Tuner.restore` unpickles them: a crafted file in an experiment directory runs
code as whoever resumes it. Experiments live on shared NFS and object storage that others can write, so `mmsa resume`
loads only state files it can prove this user's searches wrote.

Every state file a search backs up (search/state_backup.py) is signed with HMAC-SHA256 under a key that never leaves
the user's machine (KEY_FILE, created on first use, mode 600; `MMSA_STATE_KEY` points elsewhere, e.g. a key shared
by the nodes of one cluster). Before Ray reads anything, `verify` checks each live state file against its signature;
one that does not match is replaced by the signed backup copy, and with no signed copy the resume is refused before
anything is unpickled. `mmsa resume --trust-state` re-signs the files as they are, for an experiment the user trusts
(copied from a colleague or another machine, or written before signing existed).
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

import pyarrow.fs as pafs

from data_pipeline.atomic import write_file

from .ray_internals import STATE_FILE_PATTERNS
from .storage import read_bytes

KEY_ENV = "MMSA_STATE_KEY"
KEY_FILE = Path.home() / ".config" / "mmsa-tune" / "state.key"
SIGNATURES = "signatures.json"  # in the backup folder: state file name -> HMACs of its latest versions
KEEP_SIGNATURES = 4  # versions per name: a copy whose write failed (full disk) leaves an older version in place


def _key() -> bytes:
    path = Path(os.environ.get(KEY_ENV) or KEY_FILE)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def sign(name: str, data: bytes) -> str:
    return hmac.new(_key(), name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def read_signatures(fs, backup_dir: str) -> dict[str, str]:
    try:
        sigs = json.loads(read_bytes(fs, f"{backup_dir}/{SIGNATURES}", _experiment(backup_dir)) or b"{}")
        return sigs if isinstance(sigs, dict) else {}
    except ValueError:
        return {}


def add_signatures(fs, backup_dir: str, files: dict[str, bytes]) -> None:
    """Sign new versions BEFORE their copies are written: if a copy's write then fails, the version it leaves in
    place is still among the signed ones."""
    sigs = read_signatures(fs, backup_dir)
    for name, data in files.items():
        old = sigs.get(name)
        old = [old] if isinstance(old, str) else list(old or [])
        sigs[name] = (old + [sign(name, data)])[-KEEP_SIGNATURES:]
    write_file(f"{backup_dir}/{SIGNATURES}", json.dumps(sigs, indent=0).encode(), fs, root=_experiment(backup_dir))


def _experiment(backup_dir: str) -> str:
    """The experiment folder holding the backup folder: no link below it is followed."""
    return backup_dir.rstrip("/").rsplit("/", 1)[0]


def signed(sigs: dict, name: str, data: bytes | None) -> bool:
    if data is None or name not in sigs:
        return False
    mine = sign(name, data)
    known = sigs[name] if isinstance(sigs[name], list) else [sigs[name]]
    return any(isinstance(k, str) and hmac.compare_digest(k, mine) for k in known)


def live_state_files(fs, exp_path: str) -> list[str]:
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(exp_path)) if i.type == pafs.FileType.File]
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in STATE_FILE_PATTERNS))
