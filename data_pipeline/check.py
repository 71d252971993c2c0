"""`mmsa check-data DIR`: validate a dataset and describe it before anything expensive runs."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .dataset import SPLIT_FILES, check_data_dir, class_warnings, format_bad, read_rows, read_sample, split_problem, stratified_split
from .labels import LABEL_TO_ID, LABELS


def check_data(data_dir: str | Path, val_fraction: float = 0.2, split_seed: int = 0, workers: int = 4) -> tuple[str, bool]:
    """Return (report text, usable). Label-file errors raise UserError; bad samples are listed in the report."""
    root = check_data_dir(data_dir)
    lines = [f"dataset {root}"]
    usable = True
    encodings: Counter = Counter()
    formats: Counter = Counter()
    modes: Counter = Counter()
    widths, heights, empty, n_texts = [], [], 0, 0
    guids_of = {}
    for split in ("train", "test"):
        rows = read_rows(root, split)
        guids_of[split] = [r.guid for r in rows]
        with ThreadPoolExecutor(workers) as pool:
            samples = list(pool.map(lambda r: read_sample(root, r, None), rows))
        if split == "train":
            per = Counter(r.tag for r in rows)
            lines.append(f"{SPLIT_FILES[split]}: {len(rows)} rows (" + ", ".join(f"{l} {per[l]}" for l in LABELS) + ")")
            guids = np.array([r.guid for r in rows])
            labels = np.array([LABEL_TO_ID[r.tag] for r in rows])
            tr, va = stratified_split(guids, labels, val_fraction, split_seed)
            lines.append(f"  split (val_fraction {val_fraction}, split_seed {split_seed}): train {len(tr)}, val {len(va)}")
            lines += ["  " + w for w in class_warnings([r.tag for r in rows])]
            problem = split_problem(tr, va, val_fraction)
            if problem:  # training would refuse this split
                usable = False
                lines.append(f"  {problem}")
        else:
            lines.append(f"{SPLIT_FILES[split]}: {len(rows)} rows (tags: null)")
        for s in samples:
            if s.encoding:
                n_texts += 1
                encodings[s.encoding] += 1
                empty += s.text == ""
            if s.image_info:
                formats[s.image_info.format] += 1
                modes[s.image_info.mode] += 1
                widths.append(s.image_info.size[0])
                heights.append(s.image_info.size[1])
        bad = [(s.guid, s.problem) for s in samples if s.problem]
        if bad:
            usable = False
            lines.append(format_bad(root / SPLIT_FILES[split], bad))
    lines += leak_warning(root, guids_of["train"], guids_of["test"])
    lines.append(f"texts: {n_texts} read, {empty} empty; decoded as " + ", ".join(f"{e} {c}" for e, c in encodings.most_common()))
    if widths:
        lines.append("images: formats " + ", ".join(f"{f} {c}" for f, c in formats.most_common())
                     + "; modes " + ", ".join(f"{m} {c}" for m, c in modes.most_common()))
        lines.append(f"  width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px")
    lines.append("OK: the dataset can be used." if usable else "NOT USABLE as is: see the bad files above.")
    return "\n".join(lines), usable


def leak_warning(root: Path, train: list[str], test: list[str]) -> list[str]:
    """Guids both labelled and in the test file: the same files (data/{guid}.*) in both, so a score on the test
    file counts samples the model was trained on. A warning, not a refusal: training and validation are not affected
    (the test file has no labels), and the test file is usually given; but whoever scores the predictions must know."""
    both = sorted(set(train) & set(test), key=lambda g: (len(g), g))
    if not both:
        return []
    shown = ", ".join(both[:20]) + (f" ... and {len(both) - 20} more" if len(both) > 20 else "")
    return [f"warning: {len(both)} guid(s) are both labelled ({root / SPLIT_FILES['train']}) and in the test file "
            f"({root / SPLIT_FILES['test']}): {shown}. They are the same samples (data/GUID.txt and .jpg), so a score "
            "on the test file includes rows the model trained on (a train/test leak); remove them from one of the "
            "files if the split is yours."]
