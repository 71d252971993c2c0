"""The lab layout on disk: `train.txt`, `test_without_label.txt`, `data/{guid}.txt`, `data/{guid}.jpg`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .images import BadImage, ImageInfo, inspect_image, load_image
from .labels import LABEL_TO_ID, LabelRow, read_label_file
from .printable import term
from .text import decode_text

SPLIT_FILES = {"train": "train.txt", "test": "test_without_label.txt"}
MAX_TEXT_BYTES = 1 << 20  # a tweet is at most a few KiB; a bigger data/{guid}.txt is some other file
MIN_VAL_ROWS = 10  # below this one sample moves val accuracy by over 10 points: early stopping and "best" follow noise


@dataclass(frozen=True)
class RawSample:
    guid: str
    label: int  # -1 for the test file
    text: str
    encoding: str
    image: np.ndarray | None  # uint8 (3, S, S) when a size was asked for
    image_info: ImageInfo | None
    problem: str | None  # why this sample cannot be used, or None


def check_data_dir(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"{root}: data directory not found. It must hold train.txt, test_without_label.txt and data/.")
    if not (root / "data").is_dir():
        raise UserError(f"{root}: no data/ folder; texts and pictures go in data/{{guid}}.txt and data/{{guid}}.jpg.")
    return root


def read_rows(data_dir: str | Path, split: str) -> list[LabelRow]:
    root = check_data_dir(data_dir)
    return read_label_file(root / SPLIT_FILES[split], test=(split == "test"))


def sample_paths(root: Path, guid: str) -> tuple[Path, Path]:
    # Guids are validated as plain digits, so these names cannot leave data/; a symlink still can (outside()).
    return root / "data" / f"{guid}.txt", root / "data" / f"{guid}.jpg"


def outside(root: Path, path: Path) -> bool:
    """True when path (a symlink, or under a symlinked folder) resolves outside root/data: never read such a file,
    it may be /etc/passwd or a device that never ends."""
    try:
        return not path.resolve().is_relative_to((root / "data").resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return True


def split_problem(train_labels, val_labels, val_fraction: float) -> str | None:
    """Why a train/val split cannot give meaningful validation numbers, or None."""
    if len(val_labels) < MIN_VAL_ROWS:
        return (f"the validation set has {len(val_labels)} sample(s) (val_fraction {val_fraction}); at least "
                f"{MIN_VAL_ROWS} are needed, since with fewer one sample moves val accuracy by over 10 points and "
                "early stopping, the lr schedule and a search's best trial follow noise. Add labelled rows or raise "
                "data.val_fraction.")
    if len(train_labels) == 0:
        return "the training set is empty; add labelled rows or lower data.val_fraction."
    return None


def class_warnings(labels: list[str]) -> list[str]:
    """Classes the model cannot learn or be validated on: absent, or with one row (never in both train and val)."""
    from collections import Counter

    per = Counter(labels)
    out = []
    for name in LABEL_TO_ID:
        if per[name] == 0:
            out.append(f"warning: no row is labelled {name}: the model will never predict it.")
        elif per[name] == 1:
            out.append(f"warning: only one row is labelled {name}: it lands in train or in val, never both, so "
                       "that class is either never validated or never learned.")
    return out


def read_sample(root: Path, row: LabelRow, image_size: int | None) -> RawSample:
    """Read one sample; problems are recorded, not raised, so every bad guid can be listed at once."""
    label = -1 if row.tag is None else LABEL_TO_ID[row.tag]
    text_path, image_path = sample_paths(root, row.guid)
    for p in (text_path, image_path):
        if (p.is_symlink() or p.exists()) and outside(root, p):
            return RawSample(row.guid, label, "", "", None, None,
                             f"{p.name}: links to {term(p.resolve())}, outside {root / 'data'}; refused (copy the file into data/)")
    if not text_path.is_file():
        return RawSample(row.guid, label, "", "", None, None, f"{text_path.name}: missing text file")
    if text_path.stat().st_size > MAX_TEXT_BYTES:
        return RawSample(row.guid, label, "", "", None, None,
                         f"{text_path.name}: {text_path.stat().st_size} bytes, not a tweet (limit {MAX_TEXT_BYTES})")
    text, enc = decode_text(text_path.read_bytes())
    try:
        if image_size is None:
            info, image = inspect_image(image_path), None
        else:
            image, info = load_image(image_path, image_size), None
    except BadImage as e:
        return RawSample(row.guid, label, text, enc, None, None, f"{image_path.name}: {e}")
    return RawSample(row.guid, label, text, enc, image, info, None)


def format_bad(path: Path, bad: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"  guid {g}: {why}" for g, why in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    return (
        f"{path}: {len(bad)} sample(s) cannot be used:\n{shown}{more}\n"
        "Fix or remove these files, or pass --skip-bad to leave these samples out."
    )


def stratified_split(guids: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), stratified by label. Depends only on the (guid, label) pairs and the seed,
    not on row order or platform (numpy's PCG64 stream is stable)."""
    # In numeric order without converting to a machine integer (a guid may have any number of digits): by length
    # without leading zeros, then digit by digit; the stable sort keeps equal numbers (7, 007) in file order.
    key = [g.lstrip("0") for g in np.asarray(guids, dtype=str)]
    order = np.array(sorted(range(len(key)), key=lambda i: (len(key[i]), key[i])), dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = order[labels[order] == label]
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
