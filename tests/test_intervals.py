"""Intervals and ties in `mmsa status`, `mmsa report` and `mmsa export`, on an experiment written by hand (no Ray)."""
import json

import numpy as np
import yaml

from model import metrics as M
from model.config import Config
from search.experiment import layout as experiment
from search.cli import main
from search.settings.schema import TRIAL_ID
from search.selection.stats import encode_classes, val_predictions


def write_trial(exp, tid, cfg: dict, rows: list[dict]):
    d = exp / f"trial_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(cfg))
    (d / "result.json").write_text("".join(json.dumps({TRIAL_ID: tid, "timestamp": 1000 + i, **r}) + "\n"
                                           for i, r in enumerate(rows)))


def rows_with(losses, pred, labels):
    """A trial's rows as the trainable reports them: predictions only with the epochs the trainer's rule calls best
    so far (search/selection/stats.py val_predictions, not a copy of its rule here)."""
    out, best = [], float("inf")
    for e, loss in enumerate(losses, 1):
        best = min(best, loss)
        out.append({M.EPOCH: e, M.VAL_LOSS: loss, M.VAL_ACC: float((pred == labels).mean()), M.VAL_F1: 0.5,
                    M.TRAIN_LOSS: 0.4, M.BEST_VAL_LOSS: best, "finished": int(e == len(losses))})
        out[-1] |= val_predictions(out, pred, encode_classes(labels))
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
    from search.commands.export import load_run_config

    load_run_config(out, allow_other_data=True)  # the new keys read back
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "95% interval" in md and "`b`" in md


def test_a_trial_with_only_nan_losses_and_hand_edited_stages_break_nothing(tmp_path, capsys):
    """A diverged trial (every val loss NaN) and a hand-edited `warm_start:` list: status, report and export still
    work (found by a hostile review: report crashed on the NaN trial, status and report on the list)."""
    exp = fake_experiment(tmp_path)
    nan = float("nan")
    write_trial(exp, "nan", Config().with_overrides({"train.lr": 9e-4}).to_dict(),
                [{M.EPOCH: e, M.VAL_LOSS: nan, M.VAL_ACC: 0.3, M.VAL_F1: 0.2, M.TRAIN_LOSS: nan, M.BEST_VAL_LOSS: nan}
                 for e in (1, 2)])
    meta = experiment.read_meta(exp)
    experiment.write_meta(exp, {**meta, "warm_start": [{"experiment": str(tmp_path / "gone")}, "garbage", 7, None]})
    assert main(["status", str(exp)]) == 0
    assert "nan" in capsys.readouterr().out
    assert main(["report", str(exp)]) == 0
    assert "## Stages" in (exp / "report.md").read_text()
    assert main(["export", str(exp), "-o", str(tmp_path / "b.yaml")]) == 0
    assert "earlier stage" not in capsys.readouterr().out


def test_export_note_compares_only_stages_on_the_same_data(tmp_path, capsys):
    """`mmsa export` of a warm-started search names an earlier stage's better trial only when that stage ran on the
    same data (--warm-start-any-data lets a search start from other data, whose losses mean something else)."""
    src = fake_experiment(tmp_path / "s")  # best val loss 0.5 (trial a)
    exp = tmp_path / "w"
    experiment.write_meta(exp, {**experiment.read_meta(src), "name": "w", "warm_start": [{"experiment": str(src)}]})
    cfg = Config().with_overrides({"train.lr": 1e-4}).to_dict()
    labels = np.zeros(40, dtype=int)
    write_trial(exp, "z", cfg, rows_with([0.7, 0.65], labels, labels))
    assert main(["export", str(exp), "-o", str(tmp_path / "1.yaml")]) == 0
    assert f"an earlier stage has a better trial: a of {src}" in capsys.readouterr().out
    assert main(["report", str(exp)]) == 0
    assert "Best over all stages: trial `a` of stage 1" in (exp / "report.md").read_text()
    experiment.write_meta(src, {**experiment.read_meta(src), "data_fingerprint": "0" * 64})  # other data now
    assert main(["export", str(exp), "-o", str(tmp_path / "2.yaml")]) == 0
    assert "earlier stage" not in capsys.readouterr().out
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "other data: not compared" in md and "Best over all stages: trial `z` of stage 2" in md


def test_report_stages_rank_by_the_search_metric(tmp_path):
    """A refined val_acc search: `mmsa report`'s "Best over all stages" is the best by val_acc (as export's note and
    status), not the lowest val loss."""
    src = fake_experiment(tmp_path / "s")  # trial a: the best val_acc (0.8), val loss 0.5
    acc = M.objective(M.VAL_ACC)
    meta = experiment.read_meta(src)
    meta["spec"]["search"] = {"metric": M.VAL_ACC}
    experiment.write_meta(src, meta)
    exp = tmp_path / "w"
    experiment.write_meta(exp, {**meta, "name": "w", "warm_start": [{"experiment": str(src)}]})
    write_trial(exp, "z", Config().with_overrides({"train.lr": 1e-4}).to_dict(),  # the lowest loss, the worst acc
                [{M.EPOCH: 1, M.VAL_LOSS: 0.1, M.VAL_ACC: 0.2, M.VAL_F1: 0.1, M.TRAIN_LOSS: 0.1, M.BEST_VAL_LOSS: 0.1,
                  acc.running: 0.2}])
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "Best over all stages: trial `a` of stage 1, best val_acc 0.8" in md, md[md.find("## Stages"):][:1500]


def test_a_retried_failure_is_not_the_error_of_a_trial_that_finished(tmp_path, capsys):
    """Ray leaves a failed attempt's error.txt in place when the retry finishes the trial (seen on s3:// in CI): that
    trial is TERMINATED, not errored; status says it was retried and why, and only an ERROR trial carries an error (or
    one Ray's saved state does not know: nothing says it was retried)."""
    from search.selection.results import load_trials

    exp = fake_experiment(tmp_path)
    states = {"a": ("TERMINATED", 1), "c": ("ERROR", 3), "old": ("RUNNING", 1)}  # b: not in Ray's saved state
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [
        [json.dumps({"trial_id": t, "status": st}), json.dumps({"num_failures": n})] for t, (st, n) in states.items()]}))
    tb = "Traceback (most recent call last):\n  File \"x\"\nray.exceptions.ActorDiedError: The actor is dead\n"
    for t in ("a", "b", "c", "old"):
        (exp / f"trial_{t}" / "error.txt").write_text(tb)
    got = {t.trial_id: (t.state, t.error, t.retried, t.usable) for t in load_trials(exp)}
    dead = "ray.exceptions.ActorDiedError: The actor is dead"
    assert got == {"a": ("TERMINATED", "", dead, True), "b": ("PENDING", dead, "", True),  # unknown: shown as is
                   "c": ("ERROR", dead, "", False), "old": ("RUNNING", "", dead, True)}
    assert main(["status", str(exp)]) == 0
    lines = {l.split()[0]: l for l in capsys.readouterr().out.splitlines() if l.split()}
    assert lines["a"].endswith(f"retried after: {dead}") and lines["old"].endswith(f"retried after: {dead}")
    assert lines["c"].endswith(dead) and "retried" not in lines["c"]
    assert lines["b"].endswith(dead) and "retried" not in lines["b"]
