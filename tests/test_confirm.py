"""`mmsa confirm`: candidates, evidence, export of the confirmed choice, budgets; on experiments written by hand
(the slow test at the end runs a real search and confirmation on Ray)."""
import json

import numpy as np
import pytest
import yaml

from model import metrics as M
from model.config import Config
from search.experiment import layout as experiment
from search.commands import confirm
from search.cli import main
from search.selection.results import load_trials
from tests.test_intervals import fake_experiment, rows_with, write_trial


def fake_confirmation(exp, seeds=2, n=400):
    """EXP/confirm as `mmsa confirm --top 2 --seeds 2` leaves it: trial a's configuration is worse on average over
    fresh seeds than trial b's, although a was the search's best trial."""
    cands = confirm.candidates(load_trials(exp), 2)
    pts = confirm.points(cands, seeds)
    cexp = exp / confirm.CONFIRM_DIR
    experiment.write_meta(cexp, {"name": "confirm", "num_samples": len(pts), "data_dir": "x", "data_fingerprint": "f",
                                 "created": "now", "spec": {"space": {"train.lr": {"loguniform": [1e-5, 1e-3]}}},
                                 "fixed_trials": True, "top": 2, "seeds": seeds, "search_trials": 4, "candidates": cands})
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, n)
    for i, p in enumerate(pts):
        a = i < seeds
        acc = 0.6 if a else 0.8
        pred = np.where(rng.random(n) < acc, labels, (labels + 1) % 3)
        losses = [0.7, 0.6 + 0.02 * i, 0.65] if a else [0.6, 0.5, 0.45 + 0.01 * i]
        write_trial(cexp, f"c{i}", p, rows_with(losses, pred, labels))
    return cexp


def test_candidates_and_fresh_seeds(tmp_path):
    exp = fake_experiment(tmp_path)
    cands = confirm.candidates(load_trials(exp), 3)
    assert [c["trial_id"] for c in cands] == ["a", "b", "old"]  # by best val loss
    pts = confirm.points(cands[:2], 3)
    seed = Config().train.seed
    assert [p["train"]["seed"] for p in pts] == [seed + 1, seed + 2, seed + 3] * 2
    assert cands[0]["seeds"] == [seed + 1, seed + 2, seed + 3]
    assert pts[0]["train"]["lr"] == pytest.approx(1e-4) and pts[3]["train"]["lr"] == pytest.approx(2e-4)


def test_evidence_export_status_report(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    fake_confirmation(exp)
    assert confirm.finished(str(exp / "confirm"))
    ev = confirm.write_evidence(str(exp))
    assert ev["chosen"] == "b" and ev["trial_epochs"] == 12
    b = confirm.chosen(ev)
    assert b["epochs"] == 3 and b["runs"] == 2 and b["best_val_loss_std"] > 0
    assert b["val_acc_interval"][0] < b["best_val_acc_mean"] < b["val_acc_interval"][1]
    a = next(c for c in ev["candidates"] if c["trial_id"] == "a")
    assert a["epochs"] == 2 and a["tied"] is False
    assert json.loads((exp / "confirm.json").read_text())["chosen"] == "b"

    out = tmp_path / "best.yaml"
    assert main(["export", str(exp), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "confirmed choice" in printed and "trial b" in printed
    sec = yaml.safe_load(out.read_text())["search"]
    assert sec["selection"] == "confirmed" and sec["best_epoch"] == 3 and sec["checkpoint"] is None
    assert yaml.safe_load(out.read_text())["train"]["lr"] == pytest.approx(2e-4)
    from search.commands.export import load_run_config

    assert load_run_config(out, allow_other_data=True).train.epochs == 3

    assert main(["status", str(exp)]) == 0
    assert "(search 7 + confirm 12)" in capsys.readouterr().out
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "## Confirmation" in md and "**chosen**" in md and "not tied" in md


def test_a_search_changed_after_its_confirmation_exports_its_best_trial_and_says_why(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    fake_confirmation(exp)
    confirm.write_evidence(str(exp))
    # the search was resumed with more trials since: a new best configuration the confirmation never saw
    write_trial(exp, "new", Config().with_overrides({"train.lr": 7e-4}).to_dict(),
                rows_with([0.3, 0.2], np.zeros(400, dtype=int), np.zeros(400, dtype=int)))
    out = tmp_path / "best.yaml"
    assert main(["export", str(exp), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "confirmation is not used" in printed and "best trial new" in printed and "mmsa confirm" in printed
    sec = yaml.safe_load(out.read_text())["search"]
    assert sec["trial_id"] == "new" and sec.get("selection", "best trial") == "best trial" and not sec.get("confirm")
    assert main(["report", str(exp)]) == 0
    assert "**Outdated:**" in (exp / "report.md").read_text()


def test_confirm_refusals(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    for argv, msg in ((["--top", "0"], "--top 0"), (["--seeds", "101"], "--seeds 101")):
        assert main(["confirm", str(exp), *argv]) == 2
        assert msg in capsys.readouterr().err
    cexp = fake_confirmation(exp)
    assert main(["confirm", str(cexp)]) == 2
    assert "a `mmsa confirm` run (fixed configurations with fresh seeds), not a search" in capsys.readouterr().err
    assert main(["confirm", str(exp), "--top", "3"]) == 2
    assert "confirmed already with --top 2" in capsys.readouterr().err
    assert not (exp / "confirm.json").exists()  # refusals write nothing
    assert main(["confirm", str(exp), "--top", "2", "--seeds", "2"]) == 0  # finished: evidence rewritten, no Ray
    assert (exp / "confirm.json").is_file()
    (exp / "confirm" / "trial_c3" / "result.json").write_text("")  # an unfinished confirmation (trial lost its rows)
    (exp / "confirm.json").unlink()
    assert main(["confirm", str(exp), "--top", "2", "--seeds", "2"]) == 2
    assert "mmsa resume" in capsys.readouterr().err
