"""End to end on a real local Ray instance: the demo (search + export + train + predict), export round trip,
Optuna's view of ASHA-stopped trials, and the refusal messages of resume/status/export."""
import json
from pathlib import Path

import optuna
import pytest

from model import metrics as M
from search.cli import main
from search.commands.demo import run_demo
from search.trial.checkpoint_retention import METRICS_FILE
from search.selection.results import load_trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("demo")
    db = f"sqlite:///{out / 'optuna.db'}"
    res = run_demo(out, quiet=True, num_samples=12, optuna_storage=db, log=lambda *a: None)
    res["db"] = db
    return res


def test_demo_end_to_end(demo):
    trials = load_trials(demo["experiment"])
    assert len(trials) == 12 and all(t.state == "TERMINATED" for t in trials)
    epochs = sorted(len(t.results) for t in trials)
    assert epochs[0] < epochs[-1] == 8  # ASHA stopped some trials early, the best ran to the end
    assert sum(len(t.results) for t in trials) < 0.6 * 12 * 8
    assert len({(t.config["train"]["lr"], t.config["train"]["batch_size"]) for t in trials}) == 12
    best = min(t.best[M.VAL_LOSS] for t in trials)
    assert demo["export"]["metrics"]["val_loss"] == pytest.approx(best)
    assert best < 0.3  # the demo is learnable; chance level is about 0.9
    lines = demo["predictions"].read_text().splitlines()
    assert lines[0] == "guid,tag" and len(lines) == 51
    assert (demo["run"] / "model.safetensors").is_file() and (demo["run"] / "curves.png").is_file()


def test_checkpoints_kept_are_the_best_and_the_newest(demo):
    """Default keep_checkpoints 2: per trial the two best epochs by val_loss and the two newest stay, nothing else."""
    for t in load_trials(demo["experiment"]):
        kept = {json.loads((d / METRICS_FILE).read_text())[M.EPOCH] for d in t.path.glob("checkpoint_*")}
        by_loss = sorted(t.results, key=lambda r: r[M.VAL_LOSS])
        want = {r[M.EPOCH] for r in by_loss[:2]} | set(t.epochs[-2:])
        assert kept == want, (t.trial_id, kept, want)


def test_finished_demo_keeps_only_the_best_trials_weights(demo):
    """checkpoint_mode async: no training state of finished trials, best weights of keep_best_trials (3) trials; the
    demo's experiment was 1.5 GB with 26 whole checkpoints before."""
    exp = demo["experiment"]
    assert not list(exp.glob("trial_*/mmsa_state/epoch_*"))
    best = list(exp.glob("trial_*/mmsa_best_epoch_*"))
    assert len(best) == 3 and not list(exp.glob("trial_*/.*.tmp*"))
    ranked = sorted(load_trials(exp), key=lambda t: (t.best[M.VAL_LOSS], t.path.name))
    assert {b.parent.name for b in best} == {t.path.name for t in ranked[:3]}
    weights = (best[0] / "model.safetensors").stat().st_size
    # the export's copy (EXP/exported/) of an mmsa best folder is hard links: count each file's bytes once
    files = {(s.st_dev, s.st_ino): s.st_size for s in (f.stat() for f in exp.rglob("*") if f.is_file())}
    total = sum(files.values())
    assert total < 3 * weights + 20 * 2**20, total
    exported = list(exp.glob("exported/*/model.safetensors"))
    assert len(exported) == 1 and exported[0].stat().st_nlink == 2
    assert exported[0].stat().st_ino in {(b / "model.safetensors").stat().st_ino for b in best}


def test_status_reads_files_cut_by_a_crash(demo, tmp_path, capsys):
    """A kill while Ray copies its files leaves a cut-off last result line or state file: status still reads."""
    import shutil

    exp = tmp_path / "demo"
    shutil.copytree(demo["experiment"], exp, ignore=shutil.ignore_patterns("checkpoint_*"))
    before = {t.trial_id: (t.state, len(t.results)) for t in load_trials(exp)}
    state = max(exp.glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:100])
    trial = sorted(exp.glob("trial_*"))[0]
    text = (trial / "result.json").read_text()
    (trial / "result.json").write_text(text + text.splitlines()[-1][:40])
    after = {t.trial_id: (t.state, len(t.results)) for t in load_trials(exp)}
    assert after == before
    assert main(["status", str(exp)]) == 0 and "12 terminated" in capsys.readouterr().out


def test_optuna_sees_pruned_and_completed_trials(demo):
    study = optuna.load_study(study_name="demo", storage=demo["db"])
    by_params = {(round(t.params["train/lr"], 12), t.params["train/batch_size"]): t for t in study.trials}
    assert len(study.trials) == 12
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    for t in load_trials(demo["experiment"]):
        ot = by_params[(round(t.config["train"]["lr"], 12), t.config["train"]["batch_size"])]
        finished = bool(t.results[-1]["finished"])
        if finished:
            assert ot.state == optuna.trial.TrialState.COMPLETE
            assert ot.value == pytest.approx(min(r[M.VAL_LOSS] for r in t.results))
        else:
            assert ot.state == optuna.trial.TrialState.PRUNED and len(t.results) < 8
            # TPE ranks it by its intermediate values: best val loss per epoch
            assert ot.intermediate_values[len(t.results)] == pytest.approx(t.results[-1][M.BEST_VAL_LOSS])


def test_status_and_export_cli(demo, tmp_path, capsys):
    exp = str(demo["experiment"])
    assert main(["status", exp]) == 0
    out = capsys.readouterr().out
    assert "demo: 12 of 12 trials started, 12 terminated, 0 errored" in out
    assert "best val_loss" in out and out.count("TERMINATED") == 12
    assert main(["export", exp, "-o", str(tmp_path / "best.yaml")]) == 0
    capsys.readouterr()
    import yaml

    d = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert set(d) == {"data", "model", "train", "search"}
    info = d["search"]
    assert info["best_epoch"] >= 1 and info["data_fingerprint"] and info["checkpoint"]
    assert (demo["experiment"] / info["trial_id"].join(["trial_", ""])).is_dir()
    # checkpoint_mode async: the best epoch's weights folder, which `mmsa predict --model` reads
    assert info["checkpoint"].endswith(f"-mmsa_best_epoch_{info['best_epoch']:06d}") and "/exported/" in info["checkpoint"]
    assert (Path(info["checkpoint"]) / "model.safetensors").is_file()


def test_export_then_train_round_trip(demo, tmp_path, capsys):
    best = str(demo["best"])
    import yaml

    best_epoch = yaml.safe_load(open(best))["search"]["best_epoch"]
    assert main(["train", "--config", best, "--out", str(tmp_path / "final"), "--quiet"]) == 0
    hist = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert len(hist) == best_epoch  # trains for the best epoch count
    # the same file with another dataset is refused, unless asked
    from data_pipeline.demo_data import make_demo_data

    make_demo_data(tmp_path / "other", n=80, seed=9)
    assert main(["train", "--config", best, "--data", str(tmp_path / "other"), "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    assert "was exported from ran on other data than" in capsys.readouterr().err
    assert main(["train", "--config", best, "--data", str(tmp_path / "other"), "--out", str(tmp_path / "x"),
                 "--epochs", "1", "--allow-other-data", "--quiet"]) == 0


def test_not_a_search_directory(tmp_path, capsys):
    for cmd in (["status", str(tmp_path)], ["export", str(tmp_path)], ["resume", str(tmp_path)]):
        assert main(cmd) == 2
        assert "not a search experiment" in capsys.readouterr().err


def test_uri_storage_search_status_export_resume(demo_cfg, tmp_path, ray_local, capsys, monkeypatch):
    """Object-store style storage (file:// here; s3:// and gs:// go through the same pyarrow filesystem code)."""
    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    spec = parse_spec({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                       "fixed": demo_cfg.with_overrides({"epochs": 2}).to_dict()}, "uri test")
    uri = f"file://{tmp_path}/rr"
    run_search(spec, 2, "u", uri, verbose=0, log=lambda *a: None)
    exp = f"{uri}/u"
    assert main(["status", exp]) == 0
    assert "u: 2 of 2 trials started, 2 terminated" in capsys.readouterr().out
    assert main(["export", exp, "-o", str(tmp_path / "best.yaml")]) == 0
    import yaml

    info = yaml.safe_load((tmp_path / "best.yaml").read_text())["search"]
    assert info["checkpoint"].startswith(f"{exp}/exported/trial_") and info["experiment"] == exp
    monkeypatch.chdir(tmp_path)
    assert main(["report", exp]) == 0
    assert (tmp_path / "u-report" / "report.md").is_file()
    assert main(["resume", exp, "--verbose", "0"]) == 0  # a finished search resumes to finished
