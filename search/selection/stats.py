"""How sure a validation accuracy is: 95% intervals and ties, from the per-row validation predictions.

A validation accuracy measured on n rows is a sample mean of n right-or-wrong answers: with 800 rows at 75% its
standard error is about 1.5 points. Two trials evaluated on the same rows are compared *paired*: resampling the
rows (bootstrap) moves both accuracies together, so the interval of their difference is much narrower than the two
intervals side by side suggest. A trial is "tied" with the best when the 95% interval of the difference contains 0.

Everything here is seeded (the same experiment gives the same intervals every time) and needs numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
SEED = 0


def encode_classes(classes) -> str:
    """Class indices (0..9) as one digit per row: compact in result.json, JSON-safe."""
    a = np.asarray(classes).astype(np.int64).ravel()
    if a.size and (a.min() < 0 or a.max() > 9):
        raise ValueError("class indices must be 0..9")
    return (a.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def decode_classes(s) -> np.ndarray | None:
    """The inverse of encode_classes; None for anything that is not a string of digits."""
    if not isinstance(s, str) or not s.isascii() or not s.isdigit():
        return None
    return np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("0")


def correct_rows(pred: str, label: str) -> np.ndarray | None:
    """Per validation row 1.0 when the prediction is right, from the encoded strings; None when unusable."""
    p, y = decode_classes(pred), decode_classes(label)
    if p is None or y is None or len(p) != len(y) or not len(p):
        return None
    return (p == y).astype(np.float64)


@dataclass
class Interval:
    value: float  # the mean over the rows (an accuracy, or a mean accuracy over seeds)
    lo: float
    hi: float
    diff_lo: float | None = None  # interval of value - reference's value (paired), None when not comparable
    diff_hi: float | None = None
    tied: bool | None = None  # None: the reference itself, or evaluated on other rows than the reference
    ref: bool = False  # the reference (the best) itself

    def fmt(self) -> str:
        return f"{self.value:.4f} [{self.lo:.3f}, {self.hi:.3f}]"


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) counts of each row in each bootstrap resample; the same for every trial of the same n."""
    rng = np.random.default_rng([seed, n])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def compare(scores: dict[str, np.ndarray], ref: str | None = None, rows: dict[str, str] | None = None, *,
            level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Interval]:
    """Bootstrap intervals of each key's mean score (per-row values in [0, 1]), and, paired over the same rows, of
    its difference to `ref`'s. `rows` names each key's validation rows (e.g. the encoded labels): only keys with the
    same rows as `ref` are compared with it (default: same length means same rows)."""
    alpha = (1 - level) / 2
    q = [100 * alpha, 100 * (1 - alpha)]
    weights: dict[int, np.ndarray] = {}
    boots: dict[str, np.ndarray] = {}
    out: dict[str, Interval] = {}
    for key, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        n = len(s)
        if n not in weights:
            weights[n] = _weights(n, n_boot, seed)
        boots[key] = weights[n] @ s / n
        lo, hi = np.percentile(boots[key], q)
        out[key] = Interval(float(s.mean()), float(lo), float(hi))
    if ref is None or ref not in scores:
        return out
    out[ref].ref = True
    same = (lambda k: rows[k] == rows[ref]) if rows is not None else (lambda k: len(scores[k]) == len(scores[ref]))
    for key, iv in out.items():
        if key == ref or not same(key):
            continue
        lo, hi = np.percentile(boots[key] - boots[ref], q)
        iv.diff_lo, iv.diff_hi = float(lo), float(hi)
        iv.tied = bool(lo <= 0 <= hi)
    return out


def val_predictions(history: list[dict], pred, labels: str) -> dict:
    """The validation predictions a trial reports with its latest epoch (history[-1]): only when that epoch is the
    trial's best so far by any search objective, by the trainer's rule (model/metrics.best_index), so its best
    epoch carries them whatever search.metric is (search/settings/schema.py names the keys)."""
    from search.settings.schema import VAL_LABEL, VAL_PRED, M

    if pred is None or not any(o.is_best(history) for o in M.OBJECTIVES.values()):
        return {}
    return {VAL_PRED: encode_classes(pred), VAL_LABEL: labels}
