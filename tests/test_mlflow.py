"""`--mlflow [URI]`: a real search logged to a real local MLflow store (SQLite), read back with MLflow's own client:
a parent run per search, a nested run per trial with its sampled values and per-epoch metrics (step = epoch), how it
ended; `mmsa resume` continues the same runs without logging an epoch twice; `mmsa export` logs its choice to the
parent run. Without MLflow installed `--mlflow` is one `error:` line; a store that cannot be reached is one warning
line and the search goes on; the record of run ids in the experiment is untrusted input."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from search.cli import main
from search.experiment import mlflow_runs as R
from search.experiment.faults import PRUNE_ENV
from searchproc import write_space

mlflow = pytest.importorskip("mlflow")
SPACE = {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]}}


def _client(uri):
    return mlflow.MlflowClient(tracking_uri=uri)


def _runs(uri, name):
    c = _client(uri)
    e = c.get_experiment_by_name(name)
    runs = c.search_runs([e.experiment_id])
    parents = [r for r in runs if R.PARENT_TAG not in r.data.tags]
    children = [r for r in runs if R.PARENT_TAG in r.data.tags]
    return parents, children


def _steps(uri, run_id, key="val_loss"):
    return [m.step for m in _client(uri).get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def logged(demo_cfg, tmp_path_factory, ray_local):
    """2 trials x 3 epochs, one at a time, logged to a fresh SQLite store; the driver is SIGKILLed right after the
    first trial's epoch-2 checkpoint, before Ray saved the state that records it (MMSA_TEST_FAULT_PRUNE, the worst
    moment), so `mmsa resume` (no --mlflow: the search's signed record says where) trains epoch 2 of that trial again
    and reports it a second time. Returns the experiment, the store, and each run's val_loss steps before the resume."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    (tmp / "store").mkdir()
    fixed = demo_cfg.with_overrides({"patience": 0, "epochs": 3}).to_dict()
    space = write_space(tmp / "space.yaml", fixed, SPACE, {"grace_period": 3, "max_concurrent": 1,
                                                           "keep_checkpoints": 1})
    r = subprocess.run([sys.executable, "-m", "search.cli", "search", "--space", str(space), "--num-samples", "2",
                        "--name", "m", "--storage", str(tmp), "--verbose", "0", "--mlflow", uri],
                       capture_output=True, text=True, timeout=600, env={**os.environ, PRUNE_ENV: "2"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "warning: MLflow" not in r.stderr, r.stderr[-3000:]
    rec, why = R.read(str(exp := tmp / "m"))
    assert why is None and rec["tracking_uri"] == uri
    before = {tid: _steps(uri, run) for tid, run in rec["trials"].items()}
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    return exp, uri, rec, before


@pytest.mark.slow
def test_a_search_is_a_parent_run_with_a_nested_run_per_trial_resumed_without_a_duplicate_epoch(logged, capsys):
    exp, uri, rec, before = logged
    assert [2] in [s[-1:] for s in before.values()]  # the killed driver had logged epoch 2, which is trained again
    assert R.read(str(exp))[0]["parent_run_id"] == rec["parent_run_id"]
    parents, children = _runs(uri, "m")
    assert [p.info.run_id for p in parents] == [rec["parent_run_id"]]  # the resume made no new parent...
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags[R.TAG_EXPERIMENT] == str(exp)
    assert parent.data.params["train.epochs"] == "3" and parent.data.params["search.num_samples"] == "2"
    assert len(children) == 2  # ...and no new run for the trial it continued
    for c in children:
        tid = c.data.tags[R.TAG_TRIAL]
        assert c.data.tags[R.PARENT_TAG] == parent.info.run_id and R.read(str(exp))[0]["trials"][tid] == c.info.run_id
        assert tid not in rec["trials"] or rec["trials"][tid] == c.info.run_id
        params = json.loads((exp / f"trial_{tid}" / "params.json").read_text())
        assert c.data.params == {"train.lr": str(params["train"]["lr"]),
                                 "train.batch_size": str(params["train"]["batch_size"])}
        for key in ("val_loss", "train_loss", "val_macro_f1"):
            assert _steps(uri, c.info.run_id, key) == [1, 2, 3], (tid, key)  # each epoch once, step = epoch
        assert "epoch" not in c.data.metrics and c.data.tags[R.TAG_END] == "finished" and c.info.status == "FINISHED"
        rows = [json.loads(line) for line in (exp / f"trial_{tid}" / "result.json").read_text().splitlines()]
        assert c.data.metrics["val_loss"] == pytest.approx(rows[-1]["val_loss"])


@pytest.mark.slow
def test_export_logs_its_choice_to_the_parent_run(logged, tmp_path, capsys):
    exp, uri, rec, _ = logged
    out = tmp_path / "best.yaml"
    assert main(["export", str(exp), "-o", str(out)]) == 0
    assert "MLflow parent run" in capsys.readouterr().out
    best = yaml.safe_load(out.read_text())["search"]
    p = _client(uri).get_run(rec["parent_run_id"])
    assert p.data.tags["mmsa.export.trial_id"] == best["trial_id"] and p.data.tags[R.TAG_SELECTION] == "best trial"
    assert p.data.metrics["export.val_loss"] == pytest.approx(best["metrics"]["val_loss"])
    assert [a.path for a in _client(uri).list_artifacts(p.info.run_id)] == ["best.yaml"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.slow
def test_an_unreachable_store_is_one_warning_and_the_search_goes_on(demo_cfg, ray_local, tmp_path, capsys):
    space = write_space(tmp_path / "s.yaml", demo_cfg.with_overrides({"epochs": 1}).to_dict(), SPACE, {})
    uri = f"http://127.0.0.1:{_closed_port()}"
    assert main(["search", "--space", str(space), "--num-samples", "1", "--name", "u", "--storage", str(tmp_path),
                 "--verbose", "0", "--mlflow", uri]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(err) == 1 and err[0].startswith(f"warning: MLflow ({uri}): could not"), err
    assert (tmp_path / "u").is_dir() and not (tmp_path / "u" / R.FILE).exists()


@pytest.mark.parametrize("uri", ["nosuchscheme://x", "http://127.0.0.1:{port}"])
def test_store_failures_are_one_warning_then_nothing(uri, tmp_path):
    said = []
    s = R.Store(uri.format(port=_closed_port()), said.append)
    assert s.experiment_id("x") is None and s.start_run("0", "p", {}) is None
    s.log("r", {"val_loss": 1.0}, step=1)
    s.end("r", "FINISHED")
    assert len(said) == 1 and said[0].startswith("warning: MLflow (") and "\n" not in said[0] and s.off


def test_without_mlflow_installed_mlflow_is_one_error_line(demo_cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as when it is absent
    assert main(["search", "--num-samples", "2", "--name", "x", "--storage", str(tmp_path), "--data",
                 demo_cfg.data.data_dir, "--mlflow"]) == 2
    assert main(["resume", str(tmp_path / "x"), "--mlflow", "sqlite:///m.db"]) == 2
    assert main(["refine", str(tmp_path / "x"), "--num-samples", "2", "--mlflow"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --mlflow: MLflow is not installed; pip install 'mmsa-tune[mlflow]'"] * 3
    assert not (tmp_path / "x").exists()


def test_default_store_and_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert R.tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert R.tracking_uri("sqlite:///a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert R.tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert R.tracking_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert R.tracking_uri("") == f"sqlite:///{tmp_path / 'env.db'}"


def test_a_file_store_path_works(tmp_path):
    """A plain path is MLflow's file store, which MLflow 3 refuses unless told: naming it is telling it."""
    s = R.Store(R.tracking_uri(str(tmp_path / "mlruns")), pytest.fail)
    run = s.start_run(s.experiment_id("f"), "p", {"a": "b"}, {"train.lr": "0.001"})
    s.log(run, {"val_loss": 0.5}, step=1)
    assert _steps(s.uri, run) == [1] and _client(s.uri).get_run(run).data.params == {"train.lr": "0.001"}


GOOD = {"tracking_uri": "sqlite:////tmp/x.db", "experiment_id": "1", "parent_run_id": "a" * 32,
        "trials": {"abc_00000": "b" * 32}}


@pytest.mark.parametrize("content", [b"", b"not json", b"[1]", b"[" * 100_000, b"\xff\xfe",
                                     json.dumps({**GOOD, "trials": {"../x": "b"}}).encode(),
                                     json.dumps({**GOOD, "parent_run_id": "a' OR 1=1"}).encode(),
                                     json.dumps({**GOOD, "tracking_uri": "http://x\n"}).encode(),
                                     json.dumps({**GOOD, "trials": []}).encode()])
def test_a_damaged_record_is_not_used(tmp_path, content):
    (tmp_path / R.FILE).write_bytes(content)
    rec, why = R.read(str(tmp_path))
    assert rec is None and "damaged or edited" in why


def test_an_unsigned_record_is_not_followed(tmp_path, capsys):
    """A planted record (another store, e.g. someone's server) is not where `mmsa export` sends anything."""
    R.write(str(tmp_path), GOOD)
    assert R.read(str(tmp_path)) == ({**GOOD, "signature": R.read(str(tmp_path))[0]["signature"]}, None)
    d = json.loads((tmp_path / R.FILE).read_text())
    (tmp_path / R.FILE).write_text(json.dumps({**d, "tracking_uri": "http://attacker.example"}))
    rec, why = R.read(str(tmp_path))
    assert rec is None and "not signed by your key" in why
    said = []
    assert R.log_export(str(tmp_path), {"trial_id": "t"}, tmp_path / "x.yaml", said.append) is None
    assert len(said) == 1 and "not signed by your key" in said[0]


def _trial(tid, config=None, last_result=None):
    """What the callback reads of Ray's Trial (a Trial needs a registered trainable and a running Ray)."""
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=tid, config=config or {"train": {"lr": 1e-3}}, last_result=last_result or {})


def _logger_exp(tmp_path):
    from search.experiment.layout import write_meta
    from search.tune.mlflow_log import MlflowLogger

    exp = tmp_path / "exp"
    write_meta(str(exp), {"name": "stopped", "num_samples": 2, "data_dir": str(tmp_path), "data_fingerprint": "f" * 64,
                          "created": "now", "spec": {"space": {"train.lr": {"loguniform": [1e-5, 1e-3]}}}})
    uri = R.tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    return MlflowLogger(str(exp), uri), exp, uri


def test_a_stopped_search_leaves_its_parent_run_killed_though_flush_is_called_twice(tmp_path):
    """Ray's experiment end (also on Ctrl-C and SIGTERM) and the tuner's flush after fit both flush the callback: the
    second call used to find no trial open and mark the stopped search FINISHED."""
    log, exp, uri = _logger_exp(tmp_path)
    log.on_trial_start(0, [], _trial("a"))
    log.on_trial_result(0, [], _trial("a"), {"epoch": 1, "val_loss": 0.7})
    log.on_experiment_end([])  # Ctrl-C: trial a still running
    log.flush()
    parents, children = _runs(uri, "stopped")
    assert [p.info.status for p in parents] == ["KILLED"] and [c.info.status for c in children] == ["KILLED"]


def test_a_resumed_run_continues_after_its_last_epoch_whatever_metric_was_not_finite(tmp_path):
    """A run whose last epochs had a NaN val loss (not logged) holds those epochs' other metrics: a resume that
    reports them again must not log them twice (the last step is over every metric, not val_loss alone)."""
    log, exp, uri = _logger_exp(tmp_path)
    for e, loss in ((1, 0.7), (2, float("nan"))):
        log.on_trial_result(0, [], _trial("a"), {"epoch": e, "val_loss": loss, "val_acc": 0.5 + e / 10})
    log.flush()
    resumed, _, _ = _logger_exp(tmp_path)  # a new driver: the signed record names the same runs
    resumed.on_trial_result(0, [], _trial("a"), {"epoch": 2, "val_loss": float("nan"), "val_acc": 0.7})  # again
    resumed.on_trial_result(0, [], _trial("a"), {"epoch": 3, "val_loss": 0.6, "val_acc": 0.8})
    resumed.flush()
    (_, ), (child, ) = _runs(uri, "stopped")
    assert _steps(uri, child.info.run_id, "val_acc") == [1, 2, 3] and _steps(uri, child.info.run_id) == [1, 3]
