"""`mmsa search --if-exists resume` (search/tune/relaunch.py): the launch command of jobs that restart (a Kubernetes
head pod, a requeued Slurm job). The same search is continued, a finished one left alone, another one refused
naming each difference; a lease left by a killed driver on another host is waited out, a live holder refused."""
from pathlib import Path
import json
import time

import pytest

from data_pipeline.errors import UserError
from search.cli import main
from search.experiment import lock
from search.experiment.lock import LOCK_FILE, ExperimentLock, wait_out_dead_holder
from search.selection.results import load_trials
from search.tune.prerun import search_differences
from searchproc import kill_group, result_rows, start, wait_rows, write_space

SPACE = {"train.lr": {"loguniform": [1e-3, 3e-3]}, "train.batch_size": {"choice": [16, 32]}}


def _meta(**over):
    meta = {"name": "x", "num_samples": 4, "data_dir": "/d", "data_fingerprint": "abc", "optuna_storage": None,
            "created": "2026-01-01T00:00:00", "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
            "storage": "/old/place", "shared_storage": False,
            "spec": {"space": {"train.lr": {"loguniform": [1e-3, 3e-3]}}, "fixed": {"train": {"epochs": 2}},
                     "search": {"seed": 0, "metric": "val_loss"}}}
    meta.update(over)
    return meta


def test_the_same_search_whatever_the_cluster_decided():
    stored = _meta()
    # tuples (a fresh spec) equal lists (read back from YAML); the cluster's choices and the date are no difference
    new = _meta(created="2027-01-01", resources={"cpu": 4, "gpu": 1}, max_concurrent=8, storage="/new",
                shared_storage=True, spec={**stored["spec"], "space": {"train.lr": {"loguniform": (1e-3, 3e-3)}}})
    assert search_differences(stored, new) == []


def test_each_difference_is_named_with_both_values():
    stored = _meta()
    new = _meta(data_fingerprint="def", num_samples=8,
                spec={"space": {"train.lr": {"loguniform": [1e-4, 3e-3]}}, "fixed": {"train": {"epochs": 3}},
                      "search": {"seed": 0, "metric": "val_loss", "max_failures": 7}})
    assert search_differences(stored, new) == [
        ("data_fingerprint", "abc", "def"), ("num_samples", 4, 8), ("spec.fixed.train.epochs", 2, 3),
        ("spec.search.max_failures", 2, 7), ("spec.space.train.lr.loguniform", [1e-3, 3e-3], [1e-4, 3e-3])]
    # a setting the stored search does not name counts with its default, as `mmsa resume` runs it (a search made
    # before the key existed is still the same search)
    assert search_differences(stored, _meta(spec={**stored["spec"], "search": {**stored["spec"]["search"],
                                                                                "max_failures": 2}})) == []
    # warm start: the sources count, not what the search recorded of their trials at its start
    warm = _meta(warm_start=[{"experiment": "/r/a", "trials": ["t1"], "skipped": {}}])
    assert search_differences(warm, _meta(warm_start=["/r/a"])) == []
    assert search_differences(warm, _meta()) == [("warm_start", ["/r/a"], None)]
    # a time budget is raised between runs (mmsa resume --time-budget): the same search, the launch's budget applies
    budgeted = _meta(spec={**stored["spec"], "search": {**stored["spec"]["search"], "time_budget": "3h"}})
    assert search_differences(budgeted, stored) == [] and search_differences(stored, budgeted) == []


def test_a_relaunch_of_a_search_whose_budget_is_spent_runs_nothing(tmp_path):
    """A restarted job meets a search its time budget ended: one line, nothing run (not an error, the job is done);
    the launch's own longer budget continues it; an unreadable time file is refused as resume refuses it."""
    from search.experiment import layout, time_used
    from search.selection.opened import Experiment
    from search.tune.relaunch import budget_spent

    exp = tmp_path / "exp"
    exp.mkdir()
    meta = _meta(spec={**_meta()["spec"], "search": {"seed": 0, "metric": "val_loss", "time_budget": "1m"}})
    layout.write_meta(str(exp), meta)
    opened = Experiment.open(str(exp), normalize=True)
    assert budget_spent(opened, None) is None  # nothing used yet
    time_used.write(str(exp), 61.0, True)
    assert "its time budget of 1m is spent" in budget_spent(opened, None)
    assert budget_spent(opened, "2m") is None  # the launch raises it: continue
    (exp / Path(time_used.path(str(exp))).name).write_text("[garbage")
    with pytest.raises(UserError, match="cannot be read"):  # refused up front, as `mmsa resume` refuses it
        budget_spent(opened, None)


def test_a_restarted_job_keeps_a_budget_raised_since_its_launch(tmp_path):
    """The job's command says --time-budget 1m; the user raised the search's to 3m with `mmsa resume` (as the spent
    message says). A restart of the job keeps 3m (one line says so) and continues; a launch budget above the
    search's raises it."""
    from search.experiment import layout, time_used
    from search.selection.opened import Experiment
    from search.tune.relaunch import budget_spent, launch_budget

    exp = tmp_path / "exp"
    exp.mkdir()
    layout.write_meta(str(exp), _meta(spec={**_meta()["spec"], "search": {"seed": 0, "metric": "val_loss",
                                                                              "time_budget": "3m"}}))
    time_used.write(str(exp), 90.0, True)  # spent by the job's 1m, not by the raised 3m
    opened = Experiment.open(str(exp), normalize=True)
    said = []
    budget = launch_budget(opened, "1m", said.append)
    assert budget is None and "keeps its time budget of 3m" in said[0] and budget_spent(opened, budget) is None
    assert launch_budget(opened, "5m", said.append) == "5m" and len(said) == 1
    assert launch_budget(opened, None, said.append) is None


def _dead_lease(exp, age: float) -> None:
    """The lease a driver killed in another pod leaves: another host (its pid cannot be checked), no renewal."""
    exp.mkdir(parents=True, exist_ok=True)
    (exp / LOCK_FILE).write_text(json.dumps({"token": "t" * 32, "host": "old-head-pod", "pid": 4242,
                                             "command": "mmsa search --name x", "started": "then",
                                             "heartbeat": time.time() - age}))


def test_a_dead_drivers_lease_is_waited_out(tmp_path):
    exp = tmp_path / "exp"
    _dead_lease(exp, lock.STALE_S - 2)
    said = []
    t0 = time.time()
    wait_out_dead_holder(str(exp), said.append, poll_s=0.2)
    assert 1.5 < time.time() - t0 < 6
    assert len(said) == 1 and "expires within 2 s: waiting" in said[0] and "old-head-pod" in said[0]
    ExperimentLock(str(exp), "mmsa search --name x").acquire().release()  # free now


def test_a_live_holder_is_not_waited_for_and_still_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSA_TEST_HEARTBEAT_S", "0.3")
    exp = str(tmp_path / "exp")
    with ExperimentLock(exp, "mmsa search --name x", on_lost=lambda: None):
        t0 = time.time()
        wait_out_dead_holder(exp, lambda s: None, poll_s=0.2)
        assert time.time() - t0 < 3  # it saw a renewal, far sooner than STALE_S
        with pytest.raises(UserError, match="in use by"):
            ExperimentLock(exp, "mmsa search --name x").acquire()


def test_no_lease_no_wait(tmp_path):
    said = []
    wait_out_dead_holder(str(tmp_path), said.append)
    assert said == []


def test_if_exists_takes_only_its_two_values(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--num-samples", "1", "--name", "x", "--if-exists", "overwrite"])
    assert "invalid choice" in capsys.readouterr().err


# ---- end to end: real Ray, tiny models ---------------------------------------------------------------------------
def _args(tmp_path, space, data, n=3, name="job"):
    return ["search", "--data", str(data), "--space", str(space), "--num-samples", str(n), "--name", name,
            "--storage", str(tmp_path / "rr"), "--verbose", "0", "--if-exists", "resume"]


@pytest.mark.slow
def test_relaunch_continues_then_leaves_finished_and_refuses_another(tmp_path, demo_cfg, ray_local, capsys,
                                                                       monkeypatch):
    fixed = demo_cfg.with_overrides({"patience": 0, "epochs": 2}).to_dict()
    space = write_space(tmp_path / "space.yaml", fixed, SPACE, {"grace_period": 2, "max_concurrent": 1, "seed": 3})
    exp = tmp_path / "rr" / "job"
    args = _args(tmp_path, space, demo_cfg.data.data_dir)
    proc = start(args)  # the first launch: nothing there, so it starts the search
    alive = wait_rows(proc, exp, 2)
    kill_group(proc)  # the head pod is lost with its driver
    proc.wait()
    assert alive, proc.stderr.read()[-3000:]
    created = (exp / "mmsa_search.yaml").read_text()
    rows = result_rows(exp)
    # the killed driver ran in the old pod: its lease names another host and counts until it is STALE_S old
    lease = json.loads((exp / LOCK_FILE).read_text())
    lease.update(host="old-head-pod", heartbeat=time.time() - lock.STALE_S + 3)
    (exp / LOCK_FILE).write_text(json.dumps(lease))

    assert main(args) == 0  # the same command, relaunched: continues the search to its 3 trials
    out = capsys.readouterr().out
    assert "waiting for that" in out and "continuing it" in out
    trials = load_trials(exp)
    assert len(trials) == 3 and all(t.state == "TERMINATED" for t in trials)
    assert (exp / "mmsa_search.yaml").read_text() == created  # the same experiment, not a new start
    assert result_rows(exp) >= rows

    done_rows = result_rows(exp)
    assert main(args) == 0  # relaunched once more after it finished: one line, nothing trained
    out = capsys.readouterr().out
    assert "already finished" in out and len(out.strip().splitlines()) == 1
    assert result_rows(exp) == done_rows

    other = write_space(tmp_path / "other.yaml", fixed, {**SPACE, "train.lr": {"loguniform": [1e-4, 3e-3]}},
                        {"grace_period": 2, "max_concurrent": 1, "seed": 3})
    assert main(_args(tmp_path, other, demo_cfg.data.data_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --if-exists resume:") and "spec.space.train.lr.loguniform" in err
    assert len(err.strip().splitlines()) == 1

    from data_pipeline.demo_data import make_demo_data

    data2 = make_demo_data(tmp_path / "data2", n=120, seed=5) and tmp_path / "data2"
    assert main(_args(tmp_path, space, data2)) == 2
    err = capsys.readouterr().err
    assert "data_fingerprint" in err and "spec.fixed.data.data_dir" in err
    assert result_rows(exp) == done_rows
