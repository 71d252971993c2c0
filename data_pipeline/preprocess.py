"""Preprocess once: tokenise texts, decode and resize pictures, save plain numpy arrays in a cache.

The cache key covers the input files' bytes and every setting that changes the arrays, so a second run on
the same data decodes no picture. Trial processes receive these arrays (through Ray's object store), never files.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from .atomic import replace_dir
from .dataset import SPLIT_FILES, check_data_dir, format_bad, outside, read_rows, read_sample, sample_paths
from .errors import UserError
from .tokenizer import load_tokenizer, tokenizer_fingerprint

CACHE_VERSION = 1  # bump when the array layout or preprocessing code changes meaning
ARRAYS = ("guids", "input_ids", "lengths", "images", "labels")


def default_cache_dir() -> Path:
    # Outside the data directory, which is often read-only (shared or mounted datasets).
    return Path(os.environ.get("MMSA_CACHE_DIR", Path.home() / ".cache" / "mmsa-tune" / "preprocessed"))


@dataclass
class Prepared:
    """One label file, preprocessed. Plain numpy arrays only: cheap to share between processes."""

    guids: np.ndarray  # str (N,)
    input_ids: np.ndarray  # int32 (N, max_length), 0-padded; real length in `lengths`
    lengths: np.ndarray  # int32 (N,)
    images: np.ndarray  # uint8 (N, 3, S, S)
    labels: np.ndarray  # int64 (N,), -1 for the test file
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.guids)

    def subset(self, idx: np.ndarray) -> "Prepared":
        return Prepared(*(getattr(self, a)[idx] for a in ARRAYS), meta=self.meta)

    @property
    def fingerprint(self) -> str:
        return self.meta.get("data_fingerprint", "")


_FINGERPRINTS: dict[tuple, str] = {}  # (dir, split, files' stat stamps) -> fingerprint, for this process


def _stamp(p: Path) -> tuple | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def data_fingerprint(data_dir: str | Path, split: str) -> str:
    """Hash of the label file and every text/picture it names (content, not timestamps, so a copy on
    another machine has the same fingerprint). Within one process a second call on files whose size, inode and
    modification time are unchanged reuses the first hash (resume and `train --config` check, then preprocess)."""
    root = check_data_dir(data_dir)
    rows = read_rows(root, split)
    label_file = root / SPLIT_FILES[split]
    pairs = [sample_paths(root, row.guid) for row in rows]
    key = (str(root.resolve()), split, _stamp(label_file), tuple(_stamp(p) for pair in pairs for p in pair))
    if key not in _FINGERPRINTS:
        h = hashlib.sha256(label_file.read_bytes())
        for row, pair in zip(rows, pairs):
            h.update(row.guid.encode() + b"\0")
            for p in pair:  # files that cannot be used are refused by read_sample; only their state is hashed here
                if outside(root, p):
                    h.update(b"<outside>")
                elif p.is_file() and p.stat().st_size <= 1 << 30:
                    h.update(p.read_bytes())
                else:
                    h.update(b"<missing>")
                h.update(b"\0")
        if len(_FINGERPRINTS) >= 8:  # a few datasets per process at most; never grow without bound
            _FINGERPRINTS.clear()
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def check_same_data(subject: str, recorded, recorded_dir, data_dir: str | Path, consequence: str, *,
                    now: str | None = None) -> None:
    """THE refusal of results made on other data (resume of a run or a search, refine, confirm, warm start, training
    an export): `subject` ran on data whose fingerprint was `recorded` (read from `recorded_dir`); the train split at
    `data_dir` (fingerprint `now`, hashed when not given) must be that data, else a UserError ending in the caller's
    `consequence` (what it would do wrong, and what to do instead)."""
    now = data_fingerprint(data_dir, "train") if now is None else now
    if recorded != now:
        raise UserError(f"{subject} ran on other data than {data_dir} holds now (it ran on {recorded_dir}, fingerprint "
                        f"{str(recorded)[:12]}; now {now[:12]}): {consequence}")


def cache_key(data_fp: str, tokenizer_dir: str | Path, max_length: int, image_size: int) -> str:
    settings = f"{CACHE_VERSION}|{data_fp}|{tokenizer_fingerprint(tokenizer_dir)}|{max_length}|{image_size}"
    return hashlib.sha256(settings.encode()).hexdigest()[:32]


def _save(dest: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    def write(tmp: Path) -> None:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    replace_dir(dest, write)  # readers see a whole cache entry or none


def _load(dest: Path) -> Prepared:
    meta = json.loads((dest / "meta.json").read_text())
    arrays = {a: np.load(dest / f"{a}.npy", mmap_mode="r", allow_pickle=False) for a in ARRAYS}
    return Prepared(**arrays, meta=meta)


def _load_whole(dest: Path) -> Prepared | None:
    """The cache entry, or None when it is absent or damaged (a file edited, cut or deleted by hand: entries are
    written whole, data_pipeline/atomic.py), in which case it is rebuilt rather than trusted."""
    if not dest.is_dir():
        return None
    try:
        p = _load(dest)
        n = len(p.guids)
        if not isinstance(p.meta.get("bad"), list) or any(len(getattr(p, a)) != n for a in ARRAYS):
            raise ValueError("arrays of different lengths")
        return p
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _build(root: Path, split: str, tokenizer_dir, max_length: int, image_size: int, workers: int, progress: bool):
    rows = read_rows(root, split)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        it = pool.map(lambda r: read_sample(root, r, image_size), rows)
        samples = list(tqdm(it, total=len(rows), desc=f"preprocessing {SPLIT_FILES[split]}", unit="sample",
                            disable=not progress, file=sys.stderr))
    bad = [(s.guid, s.problem) for s in samples if s.problem]
    good = [s for s in samples if not s.problem]
    tok = load_tokenizer(tokenizer_dir)
    enc = tok([s.text for s in good], truncation=True, max_length=max_length, padding=False)["input_ids"]
    ids = np.zeros((len(good), max_length), dtype=np.int32)
    lengths = np.zeros(len(good), dtype=np.int32)
    for i, seq in enumerate(enc):
        ids[i, : len(seq)] = seq
        lengths[i] = len(seq)
    arrays = {
        "guids": np.array([s.guid for s in good], dtype=np.str_),
        "input_ids": ids,
        "lengths": lengths,
        "images": np.stack([s.image for s in good]) if good else np.zeros((0, 3, image_size, image_size), np.uint8),
        "labels": np.array([s.label for s in good], dtype=np.int64),
    }
    meta = {
        "split": split,
        "rows": len(rows),
        "bad": bad,
        "encodings": dict(Counter(s.encoding for s in good)),
        "max_length": max_length,
        "image_size": image_size,
    }
    return arrays, meta


def prepare(
    data_dir: str | Path,
    split: str,
    tokenizer_dir: str | Path,
    max_length: int = 128,
    image_size: int = 224,
    *,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    log=print,
) -> Prepared:
    """Return the preprocessed arrays of one label file, building the cache entry if needed.

    Bad samples (missing/zero-byte/truncated/non-image pictures, missing texts) raise one UserError listing
    all of them, unless skip_bad, which drops them and says which.
    """
    root = check_data_dir(data_dir)
    data_fp = data_fingerprint(root, split)
    cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache_root}: cannot create the preprocessing cache ({e}); set MMSA_CACHE_DIR.") from None
    dest = cache_root / cache_key(data_fp, tokenizer_dir, max_length, image_size)
    with FileLock(str(dest) + ".lock"):  # several trial launchers may build the same entry at once
        prepared = _load_whole(dest)
        if prepared is None:
            arrays, meta = _build(root, split, tokenizer_dir, max_length, image_size, workers or os.cpu_count() or 1, progress)
            meta["data_fingerprint"] = data_fp
            _save(dest, arrays, meta)  # bad samples are recorded in meta and checked below
            prepared = _load(dest)
    bad = prepared.meta["bad"]
    if bad:
        if not skip_bad:
            raise UserError(format_bad(root / SPLIT_FILES[split], [tuple(b) for b in bad]))
        log(f"--skip-bad: left out {len(bad)} sample(s) of {SPLIT_FILES[split]}: " + ", ".join(g for g, _ in bad))
    return prepared
