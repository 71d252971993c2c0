"""The classification metrics next to accuracy, and the search objective (search.metric): one definition that the
best trial, ASHA, Optuna, confirm and export read."""
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from data_pipeline.errors import UserError
from data_pipeline.labels import LABELS
from model import metrics as M
from search.commands.export import load_run_config
from search.selection.results import TrialSummary, best_of
from search.settings.space import load_spec, parse_spec
from search.trial.checkpoint_retention import METRICS_FILE


def test_classification_metrics_by_hand():
    # rows: true positive/neutral/negative; columns: predicted
    conf = torch.tensor([[8, 1, 1], [3, 1, 0], [1, 0, 5]])
    m = M.classification_metrics(conf)
    assert m[M.VAL_ACC] == pytest.approx(14 / 20)
    recall = [8 / 10, 1 / 4, 5 / 6]
    precision = [8 / 12, 1 / 2, 5 / 6]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert m[M.VAL_F1] == pytest.approx(sum(f1) / 3)
    assert m[M.VAL_WF1] == pytest.approx((10 * f1[0] + 4 * f1[1] + 6 * f1[2]) / 20)
    assert [m[M.VAL_RECALL[k]] for k in LABELS] == pytest.approx(recall)
    # the majority-class predictor: accuracy looks fine, macro-F1 and the neutral recall say it learned nothing
    lazy = M.classification_metrics(torch.tensor([[6, 0, 0], [1, 0, 0], [3, 0, 0]]))
    assert lazy[M.VAL_ACC] == 0.6 and lazy[M.VAL_RECALL["neutral"]] == 0 and lazy[M.VAL_F1] == pytest.approx(0.25)


def _trial(tid, rows, objective):
    return TrialSummary(tid, Path(tid), {}, "TERMINATED", rows, objective=objective)


def _row(epoch, loss, acc, f1):
    return {M.EPOCH: epoch, M.VAL_LOSS: loss, M.VAL_ACC: acc, M.VAL_F1: f1}


@pytest.mark.parametrize("metric,best_trial,best_epoch", [("val_loss", "a", 1), ("val_acc", "b", 2),
                                                          ("val_macro_f1", "a", 2)])
def test_best_trial_and_epoch_follow_the_objective(metric, best_trial, best_epoch):
    obj = M.objective(metric)
    a = _trial("a", [_row(1, 0.50, 0.70, 0.40), _row(2, 0.60, 0.71, 0.60)], obj)
    b = _trial("b", [_row(1, 0.55, 0.60, 0.30), _row(2, float("nan"), 0.75, 0.50)], obj)
    chosen = best_of([a, b])
    assert chosen.trial_id == best_trial and chosen.best[M.EPOCH] == best_epoch


def test_nan_and_missing_values_are_never_best():
    obj = M.objective("val_acc")
    rows = [{M.EPOCH: 1, M.VAL_ACC: float("nan")}, {M.EPOCH: 2}, {M.EPOCH: 3, M.VAL_ACC: 0.4}]
    assert obj.best_row(rows)[M.EPOCH] == 3
    assert obj.best_index([math.nan, 0.3, 0.5, 0.1]) == 2
    assert M.objective("val_loss").best_index([math.nan, 0.3, 0.5, 0.1]) == 3
    assert obj.best_row([{M.EPOCH: 1, M.VAL_ACC: math.inf}]) is None


def test_metric_setting_default_and_validation():
    spec = load_spec(None)
    assert spec.search.metric == "val_loss" and spec.search.objective == M.DEFAULT_OBJECTIVE
    d = {"space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}}
    assert parse_spec({**d, "search": {"metric": "val_macro_f1"}}, "s").search.objective.mode == "max"
    with pytest.raises(UserError, match="search.metric: 'f1' is not one of val_loss, val_acc, val_macro_f1"):
        parse_spec({**d, "search": {"metric": "f1"}}, "s")
    # every trial's best epoch (kept weights, the export's epoch count) follows the metric the search optimises
    assert spec.fixed.train.select_metric == "val_loss"
    assert parse_spec({**d, "search": {"metric": "val_acc"}}, "s").fixed.train.select_metric == "val_acc"
    same = {**d, "search": {"metric": "val_acc"}, "fixed": {"train": {"select_metric": "val_acc"}}}
    assert parse_spec(same, "s").fixed.train.select_metric == "val_acc"
    with pytest.raises(UserError, match="s: fixed.train.select_metric val_macro_f1 differs from search.metric val_acc"):
        parse_spec({**same, "fixed": {"train": {"select_metric": "val_macro_f1"}}}, "s")
    # the default, as a whole run config pasted into fixed: carries it: follows search.metric
    pasted = {**same, "fixed": {"train": {"select_metric": "val_loss"}}}
    assert parse_spec(pasted, "s").fixed.train.select_metric == "val_acc"
    with pytest.raises(UserError, match="space.train.select_metric cannot be searched"):
        parse_spec({"space": {"train.select_metric": {"choice": ["val_loss", "val_acc"]}}}, "s")



@pytest.mark.slow
def test_search_optimising_macro_f1(tmp_path, demo_cfg, ray_local, capsys):
    """A real search with search.metric val_macro_f1: Optuna maximises the running best macro-F1, the best trial and
    the export are by macro-F1, and status, report and export name it."""
    from search.cli import main
    from search.selection.results import load_trials
    from searchproc import write_space

    space = write_space(tmp_path / "space.yaml", demo_cfg.with_overrides({"patience": 0, "epochs": 2}).to_dict(),
                        {"train.lr": {"loguniform": [3e-4, 3e-3]}}, {"grace_period": 1, "max_concurrent": 2,
                                                                      "metric": "val_macro_f1"})
    db = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["search", "--data", demo_cfg.data.data_dir, "--space", str(space), "--num-samples", "3", "--name",
                 "f", "--storage", str(tmp_path / "rr"), "--verbose", "0", "--optuna-storage", db]) == 0
    exp = tmp_path / "rr" / "f"
    trials = load_trials(exp)
    study = optuna.load_study(study_name="f", storage=db)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for ot in study.trials:
        if ot.state == optuna.trial.TrialState.COMPLETE:
            t = next(t for t in trials if t.config["train"]["lr"] == ot.params["train/lr"])
            assert ot.value == pytest.approx(max(r[M.VAL_F1] for r in t.results))
    best = max((t for t in trials if t.best), key=lambda t: t.best[M.VAL_F1])
    assert main(["export", str(exp), "-o", str(tmp_path / "best.yaml")]) == 0
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())["search"]
    assert exported["metric"] == "val_macro_f1" and exported["trial_id"] == best.trial_id
    assert exported["metrics"][M.VAL_F1] == pytest.approx(best.best[M.VAL_F1])
    assert set(M.VAL_METRICS) <= set(exported["metrics"])
    # the weights export points at are the best epoch by macro-F1, and `mmsa train --config` keeps that epoch's too
    ck_metrics = json.loads((Path(exported["checkpoint"]) / METRICS_FILE).read_text())
    assert ck_metrics["metric"] == M.VAL_F1 and ck_metrics[M.EPOCH] == best.best[M.EPOCH]
    assert load_run_config(tmp_path / "best.yaml").train.select_metric == M.VAL_F1
    capsys.readouterr()
    assert main(["status", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "optimised: val_macro_f1" in out and "best val_macro_f1" in out and M.VAL_RECALL["neutral"] in out
    assert main(["report", str(exp)]) == 0
    report = (exp / "report.md").read_text()
    assert "best val_macro_f1" in report and M.VAL_WF1 in report


def test_every_selection_picks_trials_by_one_rule(tmp_path):
    """Which trial is best or usable is decided once (search/selection/results.py: TrialSummary.usable, rank_key, ranked,
    best_of): the best trial, `mmsa confirm`'s candidates, `mmsa refine`'s finished top trials and which finished
    trials keep their best weights agree on a tie (folder name decides), a NaN-only trial and an errored trial."""
    from model.config import Config
    from search.trial.async_checkpoint import BEST_PREFIX, retain_finished
    from search.selection.confirm_files import candidates
    from search.selection.results import ranked

    def trial(name, state, losses):
        d = tmp_path / f"trial_{name}"
        (d / f"{BEST_PREFIX}000001").mkdir(parents=True)
        cfg = Config().with_overrides({"train.lr": 0.001 * (1 + ord(name) - ord("a"))}).to_dict()
        rows = [_row(e + 1, v, 0.5, 0.5) for e, v in enumerate(losses)]
        return TrialSummary(name, d, cfg, state, rows)

    trials = [trial("b", "TERMINATED", [0.6, 0.4]), trial("a", "TERMINATED", [0.4, 0.4]),  # a tie: a, then b
              trial("c", "ERROR", [0.1]), trial("d", "TERMINATED", [math.nan, math.nan]),
              trial("e", "RUNNING", [0.3])]
    assert [t.usable for t in trials] == [True, True, False, False, True]
    assert best_of(trials).trial_id == "e" and best_of(trials).best[M.EPOCH] == 1
    assert [t.trial_id for t in ranked(trials)] == ["e", "a", "b"]
    assert [c["trial_id"] for c in candidates(trials, 3)] == ["e", "a", "b"]  # mmsa confirm
    assert [t.trial_id for t in ranked(trials, finished_only=True)] == ["a", "b"]  # mmsa refine's top trials
    assert [t.best[M.EPOCH] for t in ranked(trials)] == [1, 1, 2]  # a's tie: its first epoch
    # the driver's retention of finished trials: by their running best val loss, NaN last, ties by folder name
    done = [t for t in trials if t.state == "TERMINATED"]
    retain_finished([(str(t.path), t.results[-1][M.VAL_LOSS]) for t in done], 1)
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{BEST_PREFIX}*")) == ["trial_a", "trial_c", "trial_e"]
