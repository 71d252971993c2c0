"""`train --resume` refuses other data or settings that shaped the epochs so far; no command overwrites user data
(datasets, runs, predictions, pretrained folders) without --overwrite."""
import shutil

import pytest

from model.config import save_config
from model.run import RESUME_MAY_CHANGE, train_run
from search.cli import main


@pytest.fixture(scope="module")
def run_dir(demo_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r"
    train_run(demo_cfg.with_overrides({"train.epochs": 1}), run, log=lambda *_: None, progress=False)
    return run


@pytest.fixture
def run(run_dir, tmp_path, demo_cfg):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    save_config(demo_cfg.with_overrides({"train.epochs": 1}), tmp_path / "c.yaml")
    return d


def _train(tmp_path, run, *extra):
    return main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(run), "--quiet", *extra])


def test_resume_with_another_lr_refused(run, tmp_path, capsys):
    before = (run / "config.yaml").read_text()
    assert _train(tmp_path, run, "--resume", "--epochs", "2", "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert "cannot resume with other settings than the checkpoint's (train.lr: 0.002 in the checkpoint, 0.01 now)" in err
    assert "Settings that may change on resume: " + ", ".join(RESUME_MAY_CHANGE) in err
    assert (run / "config.yaml").read_text() == before  # nothing recorded that was not applied


def test_resume_with_other_data_refused(run, tmp_path, capsys):
    from data_pipeline.demo_data import make_demo_data

    make_demo_data(tmp_path / "other", n=80, seed=9)
    assert _train(tmp_path, run, "--resume", "--epochs", "2", "--data", str(tmp_path / "other")) == 2
    err = capsys.readouterr().err
    assert "ran on other data than" in err and "mix two datasets in one history" in err


def test_resume_with_more_epochs_applies_and_records(run, tmp_path):
    assert _train(tmp_path, run, "--resume", "--epochs", "2") == 0
    assert "epochs: 2" in (run / "config.yaml").read_text()


def test_train_into_an_existing_run_needs_a_flag(run, tmp_path, capsys):
    weights = (run / "model.safetensors").read_bytes()
    assert _train(tmp_path, run) == 2
    assert "already holds a training run. Pass --resume to continue it, --overwrite" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == weights
    assert _train(tmp_path, run, "--overwrite") == 0


def test_out_paths_that_are_files_or_missing_folders(run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _train(tmp_path, tmp_path / "afile") == 2
    assert "--out " + str(tmp_path / "afile") + ": is a file" in capsys.readouterr().err
    assert main(["predict", "--model", str(run), "--out", str(tmp_path / "no" / "p.txt"), "--quiet"]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert main(["predict", "--model", str(run), "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a directory; give a file name" in capsys.readouterr().err


def test_predict_does_not_overwrite_and_accepts_skip_bad(run, tmp_path, capsys):
    assert main(["predict", "--model", str(run), "--quiet"]) == 0
    first = (run / "predictions.txt").read_text()
    assert main(["predict", "--model", str(run), "--quiet"]) == 2
    assert "predictions.txt: already exists. Pass --overwrite" in capsys.readouterr().err
    assert main(["predict", "--model", str(run), "--quiet", "--overwrite", "--skip-bad"]) == 0
    assert (run / "predictions.txt").read_text() == first


def test_make_demo_data_does_not_replace_a_dataset(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path / "d"), "--n", "40"]) == 0
    (tmp_path / "d" / "train.txt").write_text("guid,tag\n1,positive\n")  # the user's own labels
    assert main(["make-demo-data", str(tmp_path / "d"), "--n", "40"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "d" / "train.txt").read_text() == "guid,tag\n1,positive\n"
    assert main(["make-demo-data", str(tmp_path / "d"), "--n", "40", "--overwrite"]) == 0


def test_make_tiny_pretrained_does_not_replace(tmp_path, capsys):
    (tmp_path / "resnet10.safetensors").write_bytes(b"mine")
    assert main(["make-tiny-pretrained", str(tmp_path)]) == 2
    assert "resnet10.safetensors: already there" in capsys.readouterr().err
    assert (tmp_path / "resnet10.safetensors").read_bytes() == b"mine"
