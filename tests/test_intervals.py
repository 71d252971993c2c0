"""Intervals and ties in `mmsa status`, `mmsa report` and `mmsa export`, on an experiment written by hand (no Ray)."""
import json

import numpy as np
import yaml

from model import metrics as M
from model.config import Config
from search import experiment
from search.cli import main
from search.schema import TRIAL_ID, VAL_LABEL, VAL_PRED
from search.stats import encode_classes


def write_trial(exp, tid, cfg: dict, rows: list[dict]):
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(cfg))
    (d / "result.json").write_text("".join(json.dumps({TRIAL_ID: tid, "timestamp": 1000 + i, **r}) + "\n"
                                           for i, r in enumerate(rows)))


def rows_with(losses, pred, labels):
    out, best = [], float("inf")
    for e, loss in enumerate(losses, 1):
        best = min(best, loss)
        r = {M.EPOCH: e, M.VAL_LOSS: loss, M.VAL_ACC: float((pred == labels).mean()), M.VAL_F1: 0.5, M.TRAIN_LOSS: 0.4,
             M.BEST_VAL_LOSS: best, "finished": int(e == len(losses))}
        if loss <= best:
            r |= {VAL_PRED: encode_classes(pred), VAL_LABEL: encode_classes(labels)}
        out.append(r)
    return out


def fake_experiment(tmp_path, n=400):
    exp = tmp_path / "exp"
    experiment.write_meta(exp, {"name": "exp", "num_samples": 4, "data_dir": str(tmp_path), "data_fingerprint": "f" * 64,
                                "created": "now", "spec": {"space": {"train.lr": {"loguniform": [1e-5, 1e-3]}}}})
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    good = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 3)
    close = good.copy()
    right, wrong = np.flatnonzero(good == labels)[:3], np.flatnonzero(good != labels)[:3]
    close[right], close[wrong] = (labels[right] + 1) % 3, labels[wrong]  # 3 rows worse, 3 better: tied
    bad = np.where(rng.random(n) < 0.5, labels, (labels + 1) % 3)
    for tid, lr, losses, pred in (("a", 1e-4, [0.6, 0.5], good), ("b", 2e-4, [0.55, 0.52], close),
                                  ("c", 3e-4, [0.9, 0.8], bad)):
        cfg = Config().with_overrides({"train.lr": lr}).to_dict()
        write_trial(exp, tid, cfg, rows_with(losses, pred, labels))
    write_trial(exp, "old", Config().with_overrides({"train.lr": 5e-4}).to_dict(), [{M.EPOCH: 1, M.VAL_LOSS: 0.7, M.VAL_ACC: 0.7, M.VAL_F1: 0.5,
                                                   M.TRAIN_LOSS: 0.5, M.BEST_VAL_LOSS: 0.7}])  # no predictions kept
    return exp


def test_status_shows_intervals_and_ties(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    assert main(["status", str(exp)]) == 0
    out = capsys.readouterr().out
    lines = {l.split()[0]: l for l in out.splitlines() if l.split() and l.split()[0] in ("a", "b", "c", "old")}
    assert "best" in lines["a"] and "[0." in lines["a"]
    assert "tied" in lines["b"]
    assert "lower" in lines["c"]
    assert " - " in lines["old"] and "0.7000" in lines["old"]
    assert "95% interval" in out


def test_export_and_report_carry_the_interval(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    out = tmp_path / "best.yaml"
    assert main(["export", str(exp), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    sec = yaml.safe_load(out.read_text())["search"]
    lo, hi = sec["val_acc_interval"]
    assert lo < sec["metrics"]["val_acc"] < hi and sec["tied"] == ["b"]
    assert "1 other trial(s) tied" in printed and "mmsa confirm" in printed
    from search.export import load_run_config

    load_run_config(out, allow_other_data=True)  # the new keys read back
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "95% interval" in md and "`b`" in md
