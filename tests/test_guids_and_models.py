"""check-data reports a train/test leak; guids of any length never end in a traceback (check-data, training,
predict); a text model folder of another architecture than BERT is refused before training."""
import json
import shutil

import pytest

from conftest import write_dataset
from data_pipeline.errors import UserError
from model.run import train_run
from search.cli import main

LONG_GUIDS = ["9" * 40, "1" * 25, "0" * 30 + "7", "18446744073709551616"]  # > int64, > uint64, leading zeros
TOO_LONG_GUID = "3" * 300  # no file name can hold it
# config.json model_type values (None: the key removed) and whether a BERT folder with it is accepted
MODEL_TYPES = [("roberta", False), ("distilbert", False), ("", False), (5, False), (["bert"], False), ("bert", True)]


def _rows(extra=()):
    return [(str(i), ("positive", "negative", "neutral")[i % 3]) for i in range(60)] + list(extra)


def test_train_test_leak_is_reported(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", _rows(), test_rows=["5", "17", "900"])
    assert main(["check-data", str(root)]) == 0  # a warning: training is not affected
    out = capsys.readouterr().out
    assert "warning: 2 guid(s) are both labelled" in out and ": 5, 17. They are the same samples" in out
    assert "train/test leak" in out and "OK: the dataset can be used." in out


def test_no_leak_no_warning(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", _rows(), test_rows=["900"])
    assert main(["check-data", str(root)]) == 0
    assert "both labelled" not in capsys.readouterr().out


def test_long_guids_check_train_and_predict(tmp_path, capsys, demo_cfg):
    root = write_dataset(tmp_path / "d", _rows([(g, "positive") for g in LONG_GUIDS]), test_rows=["900", "8" * 50])
    assert main(["check-data", str(root)]) == 0
    assert "OK: the dataset can be used." in capsys.readouterr().out
    run = tmp_path / "run"
    train_run(demo_cfg.with_overrides({"data.data_dir": str(root), "train.epochs": 1}), run, log=lambda *_: None,
              progress=False)
    assert main(["predict", "--model", str(run), "--quiet"]) == 0
    assert [l.split(",")[0] for l in (run / "predictions.txt").read_text().splitlines()] == ["guid", "900", "8" * 50]


def test_guid_too_long_for_a_file_name(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", _rows(), test_rows=["900"])
    (root / "train.txt").write_text((root / "train.txt").read_text() + f"{TOO_LONG_GUID},positive\n")
    assert main(["check-data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.txt:62: guid of 300 digits" in err and "Traceback" not in err


@pytest.mark.parametrize("model_type, accepted", MODEL_TYPES + [(None, False)])
def test_text_model_of_another_architecture(tiny_bert, tmp_path, demo_cfg, model_type, accepted):
    d = tmp_path / "model"
    shutil.copytree(tiny_bert, d)
    conf = json.loads((d / "config.json").read_text())
    conf.pop("architectures", None)
    if model_type is None:
        conf.pop("model_type")
    else:
        conf["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(conf))
    cfg = demo_cfg.with_overrides({"model.text_model": str(d), "train.epochs": 1})
    if accepted:
        from model.backbones import check_backbones

        check_backbones(cfg.model)
        return
    with pytest.raises(UserError) as e:
        train_run(cfg, tmp_path / "run", log=lambda *_: None, progress=False)
    assert f"{d / 'config.json'}: " in str(e.value) and "the text backbone is BERT" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written or trained


def test_bert_saved_without_model_type_but_with_its_architecture(tiny_bert, tmp_path, demo_cfg):
    from model.backbones import check_backbones

    d = tmp_path / "model"
    shutil.copytree(tiny_bert, d)
    conf = json.loads((d / "config.json").read_text())
    conf.pop("model_type")
    conf["architectures"] = ["BertModel"]
    (d / "config.json").write_text(json.dumps(conf))
    check_backbones(demo_cfg.with_overrides({"model.text_model": str(d)}).model)
