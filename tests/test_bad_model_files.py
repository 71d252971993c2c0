"""Broken or mismatched model files (run weights, trainer state, pretrained folders) are refused with the file named,
before training or prediction starts: never a traceback, never halfway through training."""
import json
import os
import shutil

import pytest

from model.run import train_run
from search.cli import main


@pytest.fixture(scope="module")
def run_dir(demo_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r"
    train_run(demo_cfg.with_overrides({"train.epochs": 1}), run, log=lambda *_: None, progress=False)
    return run


def _copy(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    (d / "predictions.txt").unlink(missing_ok=True)
    return d


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot read safetensors weights"),
    (lambda p: p.write_bytes(os.urandom(4096)), "cannot read safetensors weights"),
    (lambda p: p.write_bytes(b""), "cannot read safetensors weights"),
])
def test_predict_refuses_broken_weights(run_dir, tmp_path, capsys, damage, message):
    d = _copy(run_dir, tmp_path)
    damage(d / "model.safetensors")
    assert main(["predict", "--model", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{d / 'model.safetensors'}: {message}" in err and "Traceback" not in err
    assert not (d / "predictions.txt").exists()


def test_predict_refuses_weights_of_the_other_complexity(run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    cfg = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(cfg.replace("complexity: low", "complexity: high"))
    assert main(["predict", "--model", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: does not fit the model" in err and "complexity high" in err


def test_resume_refuses_a_cut_trainer_state(demo_cfg, run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    st = d / "checkpoint" / "trainer_state.pt"
    st.write_bytes(st.read_bytes()[:100])
    from model.config import save_config

    save_config(demo_cfg.with_overrides({"train.epochs": 2}), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(d), "--resume", "--quiet"]) == 2
    assert "trainer_state.pt: cannot read the trainer state" in capsys.readouterr().err


def _bert_copy(tiny_dir, tmp_path):
    b = tmp_path / "bert"
    shutil.copytree(tiny_dir / "bert-tiny", b)
    return b


@pytest.mark.parametrize("edit, message", [
    (lambda b: (b / "vocab.txt").write_text((b / "vocab.txt").read_text() + "extra1\nextra2\n"),
     "tokens, but config.json's vocab_size is"),
    (lambda b: (b / "config.json").write_text(json.dumps({**json.loads((b / "config.json").read_text()), "hidden_size": 64})),
     "the weights and config.json come from different models"),
    (lambda b: (b / "config.json").write_text("{not json"), "config.json: not valid JSON"),
    (lambda b: (b / "config.json").write_text("[]"), "config.json: not a BERT config"),
    (lambda b: (b / "model.safetensors").write_bytes(b"\x00" * 100), "model.safetensors: cannot read safetensors weights"),
])
def test_mismatched_pretrained_folder_refused_before_training(demo_cfg, tiny_dir, tmp_path, capsys, edit, message):
    b = _bert_copy(tiny_dir, tmp_path)
    edit(b)
    from model.config import save_config

    save_config(demo_cfg.with_overrides({"model.text_model": str(b), "train.epochs": 1}), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r").exists()


def test_cut_image_weights_refused_before_training(demo_cfg, tiny_dir, tmp_path, capsys):
    w = tmp_path / "resnet10.safetensors"
    w.write_bytes((tiny_dir / "resnet10.safetensors").read_bytes()[:5000])
    from model.config import save_config

    save_config(demo_cfg.with_overrides({"model.image_weights": str(w)}), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert f"{w}: cannot read safetensors weights" in capsys.readouterr().err
    # weights of another architecture are caught from the header too
    save_config(demo_cfg.with_overrides({"model.image_arch": "resnet18"}), tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "does not match resnet18" in capsys.readouterr().err
