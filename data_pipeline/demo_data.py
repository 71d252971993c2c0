"""A synthetic dataset in exactly the lab layout, learnable by tiny models in seconds.

Each sample's label is carried by its text, its picture, or both, so fusion clearly beats either branch alone.
It also has the real hazards: GB18030 and cp1252 texts, empty texts, grayscale/RGBA/palette/CMYK pictures,
PNG bytes behind a .jpg name, and on request K broken files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .labels import LABELS

PROPORTIONS = {"positive": 0.6, "negative": 0.3, "neutral": 0.1}  # the full dataset's label mix
WORDS = {
    "positive": ["great", "love", "happy", "awesome", "wonderful", "amazing", "best", "beautiful", "fun", "smile"],
    "negative": ["terrible", "hate", "sad", "awful", "worst", "angry", "horrible", "broken", "cry", "ugly"],
    "neutral": ["okay", "meeting", "schedule", "report", "normal", "average", "update", "plain", "listed", "noted"],
}
FILLER = ["the", "a", "today", "with", "my", "friends", "at", "this", "photo", "city", "morning", "we", "is",
          "and", "look", "street", "went", "new", "day", "game", "food", "music", "time", "home", "#tweet", "rt"]
# Picture colours: one per label when the picture carries the label, others when it does not.
COLORS = {"positive": (235, 185, 40), "negative": (30, 50, 160), "neutral": (60, 160, 70)}
NEUTRAL_COLORS = [(170, 60, 170), (128, 128, 128), (120, 70, 40), (40, 170, 180)]
BROKEN_KINDS = ("missing", "zero-byte", "truncated", "not-an-image")


def demo_vocabulary() -> list[str]:
    return sorted({w for ws in WORDS.values() for w in ws} | {w.lstrip("#") for w in FILLER})


def _text(rng, label: str, informative: bool) -> str:
    words = list(rng.choice(FILLER, size=rng.integers(3, 8)))
    if informative:
        words += list(rng.choice(WORDS[label], size=rng.integers(1, 3)))
    rng.shuffle(words)
    return " ".join(words)


def _picture(rng, label: str, informative: bool) -> Image.Image:
    w, h = int(rng.integers(48, 97)), int(rng.integers(40, 81))
    base = COLORS[label] if informative else NEUTRAL_COLORS[rng.integers(len(NEUTRAL_COLORS))]
    arr = np.clip(np.array(base, float) + rng.normal(0, 25, (h, w, 3)), 0, 255)
    # A clutter patch of random colour, so the model must look at the whole picture.
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    arr[y : y + h // 4, x : x + w // 4] = rng.integers(0, 256, 3)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _write_text(path: Path, text: str, kind: str) -> None:
    if kind == "gb18030":
        data = ("\u201c" + text + "\u201d").encode("gb18030")  # “...”: bytes a1 b0 ... a1 b1, as in the real data
    elif kind == "cp1252":
        data = ("\u201c" + text + " caf\u00e9\u2026").encode("cp1252")  # ends in a lone 0x85: not valid GB18030
    else:
        data = text.encode("utf-8")
    path.write_bytes(data)


def _write_picture(path: Path, im: Image.Image, kind: str) -> None:
    if kind == "gray":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "rgba-png":
        rgba = im.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(path, "PNG")  # PNG bytes behind a .jpg name
    elif kind == "palette-png":
        im.convert("P", palette=Image.ADAPTIVE, colors=64).save(path, "PNG")
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    else:
        im.save(path, "JPEG", quality=90)


def make_demo_data(out: str | Path, n: int = 400, n_test: int | None = None, seed: int = 0, corrupt: int = 0,
                   overwrite: bool = False, label_noise: float = 0.0) -> dict:
    """Write the dataset; returns a summary (rows per label, broken guids by kind). An existing dataset in `out`
    is replaced only with overwrite (its label files would be replaced and its data/ mixed with the demo's).
    label_noise: the share of labelled rows whose written label is replaced by another label at random (the
    content still carries the true one), so that no model can exceed about 1 - label_noise accuracy and noisy
    validation scores can mislead a search (bench/search_efficiency.py --heldout)."""
    if not 0.0 <= label_noise < 1.0:
        raise UserError(f"label_noise {label_noise}: must be from 0 to below 1.")
    rng = np.random.default_rng(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; give a directory for the demo dataset.")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out}: not empty (a dataset or other files are there). Pass --overwrite to write the demo "
                        "dataset into it anyway, or choose a new directory.")
    (out / "data").mkdir(parents=True, exist_ok=True)
    n_test = max(1, n // 8) if n_test is None else n_test
    counts = {lab: int(round(n * p)) for lab, p in PROPORTIONS.items()}
    counts["positive"] += n - sum(counts.values())
    labels = [lab for lab, c in counts.items() for _ in range(c)]
    rng.shuffle(labels)
    guids = rng.permutation(np.arange(1, 4 * (n + n_test) + 1))[: n + n_test]
    test_labels = list(rng.choice(LABELS, size=n_test, p=[PROPORTIONS[l] for l in LABELS]))
    for guid, label in zip(guids, labels + test_labels):
        carrier = rng.choice(["text", "image", "both"], p=[0.4, 0.4, 0.2])
        text_kind = rng.choice(["utf-8", "gb18030", "cp1252"], p=[0.75, 0.17, 0.08])
        text = _text(rng, label, carrier != "image")
        if carrier == "image" and rng.random() < 0.08:
            text = ""  # empty tweets exist in the real data
        _write_text(out / "data" / f"{guid}.txt", text, "utf-8" if not text else text_kind)
        pic_kind = rng.choice(["rgb", "gray", "rgba-png", "palette-png", "cmyk"], p=[0.8, 0.05, 0.05, 0.05, 0.05])
        if pic_kind == "gray" and carrier != "text":
            pic_kind = "rgb"  # grey pictures cannot carry a colour-coded label
        _write_picture(out / "data" / f"{guid}.jpg", _picture(rng, label, carrier != "text"), pic_kind)
    train_guids = [str(g) for g in guids[:n]]
    if label_noise:  # a separate stream: the dataset itself is the same as without noise
        noise_rng = np.random.default_rng([seed, 1])
        flip = noise_rng.random(n) < label_noise
        shift = noise_rng.integers(1, len(LABELS), n)
        labels = [LABELS[(LABELS.index(l) + int(k)) % len(LABELS)] if f else l for l, f, k in zip(labels, flip, shift)]
    (out / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{l}\n" for g, l in zip(train_guids, labels)))
    (out / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g in guids[n:]))
    broken: dict[str, str] = {}
    for k, guid in enumerate(rng.choice(train_guids, size=min(corrupt, n), replace=False)):
        kind = BROKEN_KINDS[k % len(BROKEN_KINDS)]
        path = out / "data" / f"{guid}.jpg"
        if kind == "missing":
            path.unlink()
        elif kind == "zero-byte":
            path.write_bytes(b"")
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[: max(200, path.stat().st_size // 3)])
        else:
            path.write_bytes(b"this is not a picture\n")
        broken[str(guid)] = kind
    return {"train": counts, "test": n_test, "broken": broken}
