"""search/selection/stats.py: intervals and paired ties from per-row validation predictions; the trainable's predictions."""
import numpy as np
import pytest

from search.selection.stats import compare, correct_rows, decode_classes, encode_classes


def test_encode_decode_roundtrip():
    a = np.array([0, 2, 1, 1, 0], dtype=np.int8)
    s = encode_classes(a)
    assert s == "02110"
    assert decode_classes(s).tolist() == a.tolist()
    for bad in (None, 3, "", "01a", "0\u0661", [0, 1]):
        assert decode_classes(bad) is None or len(decode_classes(bad)) == 0
    with pytest.raises(ValueError):
        encode_classes([0, -1])


def test_correct_rows_refuses_mismatched_or_damaged():
    assert correct_rows("012", "010").tolist() == [1.0, 1.0, 0.0]
    assert correct_rows("01", "010") is None
    assert correct_rows("0x1", "010") is None
    assert correct_rows(None, "010") is None


def test_interval_covers_accuracy_and_has_binomial_width():
    rng = np.random.default_rng(1)
    s = (rng.random(800) < 0.75).astype(float)
    iv = compare({"a": s})["a"]
    assert iv.lo < iv.value < iv.hi
    se = np.sqrt(iv.value * (1 - iv.value) / 800)
    assert abs((iv.hi - iv.lo) - 2 * 1.96 * se) < 0.01  # about +/- 3 points at 800 rows, 75%


def test_seeded_and_independent_of_other_trials():
    rng = np.random.default_rng(2)
    a, b = (rng.random(200) < 0.7).astype(float), (rng.random(200) < 0.6).astype(float)
    one = compare({"a": a, "b": b}, "a")
    two = compare({"b": b, "a": a, "c": np.ones(50)}, "a")
    assert (one["b"].lo, one["b"].diff_lo) == (two["b"].lo, two["b"].diff_lo)


def test_paired_tie_and_clear_difference():
    rng = np.random.default_rng(3)
    base = (rng.random(800) < 0.75).astype(float)
    # b differs from base on 6 rows (3 better, 3 worse): tied; c is wrong on 120 more rows: clearly lower
    b = base.copy()
    right, wrong = np.flatnonzero(base == 1)[:3], np.flatnonzero(base == 0)[:3]
    b[right], b[wrong] = 0, 1
    c = base.copy()
    c[np.flatnonzero(base == 1)[:120]] = 0
    out = compare({"best": base, "b": b, "c": c}, "best")
    assert out["best"].ref and out["best"].tied is None
    assert out["b"].tied is True and out["b"].diff_lo <= 0 <= out["b"].diff_hi
    assert out["c"].tied is False and out["c"].diff_hi < 0
    # paired is much narrower than the two unpaired intervals: b's own interval is as wide as base's
    assert out["b"].diff_hi - out["b"].diff_lo < (out["b"].hi - out["b"].lo) / 3


def test_other_rows_are_not_compared():
    s = np.ones(100)
    out = compare({"a": s, "b": s}, "a", rows={"a": "0" * 100, "b": "1" * 100})
    assert out["b"].tied is None and out["b"].diff_lo is None


def test_val_predictions_only_on_best_epochs():
    from model import metrics as M
    from search.settings.schema import VAL_LABEL, VAL_PRED
    from search.selection.stats import val_predictions

    pred = np.array([0, 1, 2], dtype=np.int8)
    e1 = {M.VAL_LOSS: 0.5, M.VAL_ACC: 0.5, M.VAL_F1: 0.5}
    assert val_predictions([e1], pred, "012") == {VAL_PRED: "012", VAL_LABEL: "012"}
    assert val_predictions([e1, {M.VAL_LOSS: 0.6, M.VAL_ACC: 0.4, M.VAL_F1: 0.4}], pred, "012") == {}
    # a tie on every objective: the first epoch stays the best (model/metrics.best_index), the second keeps nothing
    assert val_predictions([e1, dict(e1)], pred, "012") == {}
    # better by one objective only (accuracy): kept, so the best epoch by any search.metric has them
    assert val_predictions([e1, {M.VAL_LOSS: 0.6, M.VAL_ACC: 0.6, M.VAL_F1: 0.4}], pred, "012") != {}
    assert val_predictions([e1], None, "012") == {}
