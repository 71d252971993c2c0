"""Coarse to fine on a real local Ray instance with real Optuna: warm start (trials of an earlier search inside the new
space given to the study with their values, intermediate values and states), enqueue, the other-data refusal,
`mmsa refine` (space, metadata, report stages) and a refined search killed with SIGKILL and resumed."""
import shutil

import optuna
import pytest
import yaml

from data_pipeline.errors import UserError
from model import metrics as M
from search.experiment import layout as experiment
from search.cli import main
from search.selection.results import best_of, load_trials, ranked
from search.settings.schema import FINISHED
from search.settings.space import parse_spec
from search.tune.tuner import run_search
from search.selection.warm_start import ENQUEUE_ATTR, WARM_ATTR
from searchproc import kill_group, result_rows, start, wait_rows

pytestmark = pytest.mark.slow

SPACE = {"train.lr": {"loguniform": [3e-4, 3e-2]}, "train.batch_size": {"choice": [16, 32]},
         "model.complexity": {"choice": ["high", "low"]}}


def _spec(demo_cfg, space=SPACE, **search):
    return parse_spec({"space": space, "fixed": demo_cfg.with_overrides({"epochs": 3, "patience": 0}).to_dict(),
                       "search": {"grace_period": 1, "reduction_factor": 2, "max_concurrent": 1, **search}}, "test")


@pytest.fixture(scope="module")
def coarse(tmp_path_factory, ray_local, demo_cfg):
    rr = tmp_path_factory.mktemp("c2f") / "rr"
    run_search(_spec(demo_cfg), 5, "coarse", str(rr), verbose=0, log=lambda *a: None)
    exp = rr / "coarse"
    trials = load_trials(exp)
    assert len(trials) == 5 and all(t.state == "TERMINATED" for t in trials)
    return exp


def _study(db, name):
    return optuna.load_study(study_name=name, storage=db)


def test_warm_start_gives_optuna_the_known_trials_and_enqueue_goes_first(coarse, demo_cfg, tmp_path):
    trials = {t.trial_id: t for t in load_trials(coarse)}
    states = {bool(t.results[-1][FINISHED]) for t in trials.values()}
    assert states == {True, False}, "the coarse search should have both finished and ASHA-stopped trials"
    lowest = min(t.config["train"]["lr"] for t in trials.values())
    space = dict(SPACE, **{"train.lr": {"loguniform": [lowest * 1.01, 3e-2]}})  # leaves out the lowest-lr trial
    point = {"train.lr": 1e-3, "train.batch_size": 32, "model.complexity": "low"}
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"train": {"lr": 1e-3, "batch_size": 32},
                                                        "model": {"complexity": "low"}}))
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = _spec(demo_cfg, space)
    from search.selection.warm_start import enqueue_points

    spec.enqueue = enqueue_points(spec, [str(tmp_path / "best.yaml")])
    logs = []
    run_search(spec, 2, "warm", str(tmp_path / "rr"), verbose=0, optuna_storage=db, warm_start=[str(coarse)],
               log=lambda *a: logs.append(" ".join(map(str, a))))
    study = _study(db, "warm")
    warm = {t.user_attrs[WARM_ATTR].rsplit("#", 1)[1]: t for t in study.trials if WARM_ATTR in t.user_attrs}
    inside = {k for k, t in trials.items() if t.config["train"]["lr"] != lowest}
    assert set(warm) == inside
    assert any("4 trial(s) given to Optuna" in line and "skipped 1 outside the space" in line for line in logs), logs
    for tid, ot in warm.items():
        t = trials[tid]
        assert ot.params["train/lr"] == t.config["train"]["lr"]
        assert ot.params["model/complexity"] == t.config["model"]["complexity"]
        assert ot.intermediate_values == {r[M.EPOCH]: pytest.approx(r[M.BEST_VAL_LOSS]) for r in t.results}
        if t.results[-1][FINISHED]:
            assert ot.state == optuna.trial.TrialState.COMPLETE
            assert ot.value == pytest.approx(min(r[M.VAL_LOSS] for r in t.results))
        else:
            assert ot.state == optuna.trial.TrialState.PRUNED and ot.value is None
    new = [t for t in study.trials if WARM_ATTR not in t.user_attrs]
    assert len(new) == 2 and new[0].user_attrs.get(ENQUEUE_ATTR) == 0
    first = min(load_trials(tmp_path / "rr" / "warm"), key=lambda t: t.results[0]["timestamp"])
    assert {k: first.config[k.split(".")[0]][k.split(".")[1]] for k in point} == pytest.approx(point)
    meta = experiment.read_meta(tmp_path / "rr" / "warm")
    assert meta["warm_start"][0]["experiment"] == str(coarse) and sorted(meta["warm_start"][0]["trials"]) == sorted(inside)
    assert meta["spec"]["enqueue"] == [point]


def test_warm_start_from_other_data_is_refused_unless_asked(coarse, demo_cfg, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(coarse, other, ignore=shutil.ignore_patterns("checkpoint_*", "mmsa_best_*", "mmsa_state"))
    meta = experiment.read_meta(other)
    experiment.write_meta(other, {**meta, "data_fingerprint": "0" * 64})
    with pytest.raises(UserError, match="--warm-start-any-data"):
        run_search(_spec(demo_cfg), 1, "x", str(tmp_path / "rr"), verbose=0, warm_start=[str(other)])
    assert not (tmp_path / "rr").exists()
    from search.selection.warm_start import collect

    warm, rec = collect([str(other)], _spec(demo_cfg), "f" * 64, any_data=True, log=lambda *a: None)
    assert len(warm) == 5 and rec[0]["data_fingerprint"] == "0" * 64


def test_refine_writes_a_space_around_the_winner_and_reports_both_stages(coarse, tmp_path, capsys):
    work = tmp_path / "w"
    shutil.copytree(coarse, work / "coarse", symlinks=True)
    exp = work / "coarse"
    assert main(["refine", str(exp), "--dry-run", "--top", "2"]) == 0
    out = capsys.readouterr().out
    d = yaml.safe_load((work / "coarse-refine-space.yaml").read_text())
    assert "warm-start" in out and "grace_period" in out
    best = best_of(load_trials(exp))
    lo, hi = d["space"]["train.lr"]["loguniform"]
    assert lo <= best.config["train"]["lr"] <= hi and hi / lo < 100  # narrower than the coarse [3e-4, 3e-2]
    assert best.config["train"]["batch_size"] in d["space"]["train.batch_size"]["choice"]
    assert d["fixed"]["train"]["epochs"] == 3
    # The grace period is where the real top curves stop crossing (the rule itself: test_refine_rules.py): from it
    # to the last epoch they all reached, their order by best val loss so far is the final one, and not before it.
    top = ranked(load_trials(exp), finished_only=True)
    full = [t for t in top if len(t.results) == max(len(t.results) for t in top)][:2]
    assert len(full) == 2, "the coarse search should have two trials that ran every epoch"
    order = lambda e: sorted(full, key=lambda t: t.results[e - 1][M.BEST_VAL_LOSS])  # noqa: E731
    g, n = d["search"]["grace_period"], len(full[0].results)
    assert all(order(e) == order(n) for e in range(g, n + 1))
    assert g == 1 or order(g - 1) != order(n)

    assert main(["refine", str(exp), "--num-samples", "2", "--name", "fine", "--verbose", "0"]) == 0
    meta = experiment.read_meta(work / "fine")
    assert meta["refined_from"] == str(exp) and meta["warm_start"][0]["trials"]
    capsys.readouterr()
    assert main(["status", str(work / "fine")]) == 0
    assert f"warm-started from {exp}" in capsys.readouterr().out
    assert main(["report", str(work / "fine")]) == 0
    report = (work / "fine" / "report.md").read_text()
    assert "## Stages" in report and "stage 1" in report and "stage 2" in report and best.trial_id in report
    fine_best = min(t.best[M.VAL_LOSS] for t in load_trials(work / "fine") if t.best)
    assert main(["export", str(work / "fine"), "-o", str(tmp_path / "best.yaml")]) == 0
    out = capsys.readouterr().out  # the refined search exports its own best, and says when stage 1 had a better one
    assert (f"earlier stage has a better trial: {best.trial_id}" in out) == (best.best[M.VAL_LOSS] < fine_best), out


def test_refined_search_resumes_after_sigkill_without_adding_warm_trials_twice(coarse, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(coarse, work / "coarse", symlinks=True)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = start(["refine", str(work / "coarse"), "--num-samples", "3", "--name", "fine", "--verbose", "0",
                  "--optuna-storage", db])
    exp = work / "fine"
    assert wait_rows(proc, exp, 2), proc.stderr.read()[-3000:]
    kill_group(proc)
    proc.wait()
    n_warm = len(experiment.read_meta(exp)["warm_start"][0]["trials"])
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    trials = load_trials(exp)
    assert len(trials) == 3 and all(t.state == "TERMINATED" for t in trials) and result_rows(exp) >= 3
    study = _study(db, "fine")
    markers = [t.user_attrs[WARM_ATTR] for t in study.trials if WARM_ATTR in t.user_attrs]
    assert len(markers) == n_warm == len(set(markers))  # given once, not again on resume
    done = [t for t in study.trials if WARM_ATTR not in t.user_attrs
            and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) >= 3
