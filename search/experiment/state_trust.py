"""Ray's state files are pickles (tuner.pkl, searcher-state-*.pkl, search_gen_state-*.json) or JSON with pickled
parts (experiment_state-*.json), and `Tuner.restore` unpickles them: a crafted file in an experiment directory runs
code as whoever resumes it. Experiments live on shared NFS and object storage that others can write, so `mmsa resume`
loads only state files it can prove this user's searches wrote.

Every state file a search backs up (search/experiment/state_backup.py) is signed with HMAC-SHA256 under a key that never leaves
the user's machine (~/.config/mmsa-tune/state.key, created on first use, mode 600, announced; `MMSA_STATE_KEY` points
elsewhere, e.g. a key shared by the nodes of one cluster). A key that is short or empty, not a file, another user's,
or readable by others is refused with what to do (a forger who knows or can guess the key defeats the signatures).
Before Ray reads anything, `verify` checks each live state file against its signature; one that does not match is
replaced by the signed backup copy, and with no signed copy the resume is refused before anything is unpickled. `mmsa
resume --trust-state` re-signs the files as they are, for an experiment the user trusts (copied from a colleague or
another machine, or written before signing existed).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from pathlib import Path

import pyarrow.fs as pafs

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError

from search.experiment.ray_internals import is_state_file
from search.experiment.storage import parse_json, read_bytes

KEY_ENV = "MMSA_STATE_KEY"
KEY_IN_HOME = (".config", "mmsa-tune", "state.key")  # under the user's home directory, unless KEY_ENV says where
KEY_BYTES = 32  # a key is made of this many random bytes; a shorter one (cut short, typed by hand) is refused
MIN_DISTINCT_BYTES = 12  # 32 random bytes have about 30 distinct values; fewer than 12 has odds below 1e-20
SIGNATURES = "signatures.json"  # in the backup folder: state file name -> HMACs of its latest versions
KEEP_SIGNATURES = 4  # versions per name: a copy whose write failed (full disk) leaves an older version in place


def key_path() -> Path:
    """Where the key is; resolved at use, not at import (a HOME that is not a folder must not break every command)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        home = None
    if home is None or not home.is_dir():
        raise UserError(f"cannot find your home directory (HOME={os.environ.get('HOME', '')!r} is not a folder), "
                        f"where mmsa keeps the key that signs search state; set {KEY_ENV}=/a/private/path/state.key "
                        "(or fix HOME).")
    return home.joinpath(*KEY_IN_HOME)


def _refuse(path: Path, why: str, fix: str) -> UserError:
    return UserError(f"{path}: the key that signs search state {why} (see docs/reliability.md, Security). {fix}")


def _read_key(path: Path) -> bytes | None:
    """The key's bytes (None: there is none), refused unless it is a regular file of this user that no one else
    can read (as ssh does with private keys), at least KEY_BYTES long."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # NONBLOCK: a FIFO planted there must not hang
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _refuse(path, f"cannot be read ({e.strerror})", f"Make it a file you can read, or point {KEY_ENV} "
                      "at one.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a file (a folder or device is in its place)", f"Move it away (a new key is "
                          f"made on next use) or point {KEY_ENV} at the key file.")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise _refuse(path, f"belongs to another user (uid {st.st_uid}), who could forge signatures with it",
                          f"Use a key of your own: move it away (a new one is made on next use) or point {KEY_ENV} "
                          "at yours.")
        if st.st_mode & 0o077:
            raise _refuse(path, f"can be read or written by others (mode {stat.S_IMODE(st.st_mode):o}), who could "
                          "forge signatures with it", f"Run `chmod 600 {path}`.")
        data = os.read(fd, KEY_BYTES * 64)
    finally:
        os.close(fd)
    if len(data) < KEY_BYTES:
        raise _refuse(path, f"is {len(data)} bytes long, shorter than {KEY_BYTES} (cut short when it was written, "
                      "e.g. on a full disk, or not a key mmsa made)", "Move it away: a new key is made on next use; "
                      "experiments signed before then resume with `mmsa resume EXP --trust-state` once (only for "
                      "experiments you trust).")
    if len(set(data)) < MIN_DISTINCT_BYTES:
        raise _refuse(path, f"holds only {len(set(data))} distinct byte values: not random (a zero-filled or "
                      "preallocated file, or a password), so others could guess it and forge signatures",
                      "Move it away: a new random key is made on next use; experiments signed before then resume with "
                      "`mmsa resume EXP --trust-state` once (only for experiments you trust).")
    return data


def _create_key(path: Path) -> None:
    """Whole or not at all: the random bytes go to a file of our own (exclusive, mode 600), are synced, and only
    then get the key's name with a hard link, which fails if another process made the key meanwhile (theirs is then
    used). A full disk or a kill mid-write leaves at most a stray temporary file, never a short key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise _refuse(path, f"cannot be created ({e.strerror} for its folder {path.parent})",
                      f"Point {KEY_ENV} at a file in a private folder you can write.") from None
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            data = secrets.token_bytes(KEY_BYTES)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process made it first: use theirs
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
        _sync_folder(path.parent)
        _announce(path)
    except OSError as e:
        raise _refuse(path, f"cannot be created ({e.strerror})", "Free some space or point "
                      f"{KEY_ENV} at a private path you can write, then run the command again.") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _sync_folder(folder: Path) -> None:
    """Make the new name durable: a power cut must not undo a key that has signed state already."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the key is whole either way
    finally:
        os.close(fd)


def _announce(path: Path) -> None:
    print(f"mmsa: created a new key for signing search state, {path} (mode 600). `mmsa resume` loads only Ray state "
          f"signed with it: on a cluster, give every node that resumes searches the same key ({KEY_ENV}=PATH). If you "
          "had a key before, experiments signed with it resume with `--trust-state` once.", file=sys.stderr)


def _key() -> bytes:
    path = key_path()
    data = _read_key(path)
    if data is None:
        _create_key(path)
        data = _read_key(path)
    if data is None and path.is_symlink():
        raise _refuse(path, "is a link to a file that does not exist", f"Remove the link (a new key is made on next "
                      f"use) or point {KEY_ENV} at the key file.")
    if data is None:
        raise _refuse(path, "vanished right after it was created", "Run the command again.")
    return data


def check_key() -> None:
    """Refuse a bad key (or make a missing one) before a search starts, not in the middle of its first state save."""
    _key()


def sign(name: str, data: bytes) -> str:
    return hmac.new(_key(), name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def read_signatures(fs, backup_dir: str) -> dict[str, str]:
    sigs = parse_json(read_bytes(fs, f"{backup_dir}/{SIGNATURES}", _experiment(backup_dir)) or b"{}")
    return sigs if isinstance(sigs, dict) else {}  # damaged: nothing is signed, so resume refuses and says what to do


def add_signatures(fs, backup_dir: str, files: dict[str, bytes]) -> None:
    """Sign new versions BEFORE their copies are written: if a copy's write then fails, the version it leaves in
    place is still among the signed ones."""
    sigs = read_signatures(fs, backup_dir)
    for name, data in files.items():
        old = sigs.get(name)
        old = [k for k in (old if isinstance(old, list) else [old]) if isinstance(k, str)]  # a damaged entry: dropped
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
    return sorted(n for n in names if is_state_file(n))
