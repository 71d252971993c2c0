import pytest

from data_pipeline.errors import UserError
from model.config import DataConfig, ModelConfig, Config, TrainConfig, field_help, load_config, save_config


def test_defaults_are_the_labs_final_choice():
    c = Config()
    assert (c.train.batch_size, c.train.lr, c.model.complexity, c.train.epochs) == (128, 8e-6, "low", 6)
    assert c.model.text_model == "pretrained/bert-base-uncased" and c.model.image_arch == "resnet50"
    assert c.data.max_length == 128 and c.data.image_size == 224 and c.data.val_fraction == 0.2


def test_every_field_has_help():
    for k in (DataConfig, ModelConfig, TrainConfig):
        assert all(len(h) > 5 for h in field_help(k).values())


def test_yaml_round_trip(tmp_path):
    c = Config().with_overrides({"train.lr": 1e-5, "complexity": "high"})
    save_config(c, tmp_path / "c.yaml")
    back, extras = load_config(tmp_path / "c.yaml")
    assert back == c and extras == {}


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("train:\n  lrr: 1e-5\n", "c.yaml: train: unknown key(s) ['lrr']"),
        ("trainer:\n  lr: 1\n", "unknown section(s) ['trainer']"),
        ("model:\n  complexity: medium\n", "model.complexity: 'medium' is not one of high, low"),
        ("model:\n  modality: audio\n", "model.modality: 'audio' is not one of fusion, text, image"),
        ("train:\n  epochs: 0\n", "train.epochs: 0 must be >= 1"),
        ("train:\n  batch_size: 12.5\n", "train.batch_size: expected an integer, got 12.5"),
        ("train:\n  lr: -1\n", "train.lr: -1.0 must be > 0.0"),
        ("train:\n  lr: fast\n", "train.lr: expected a number, got 'fast'"),
        ("data:\n  skip_bad: maybe\n", "data.skip_bad: expected true or false"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("train: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, yaml_text, message):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "c.yaml")
    assert message in str(e.value)


def test_lr_written_without_dot_is_a_number(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 8e-6\n")  # YAML 1.1 reads this as a string
    assert load_config(tmp_path / "c.yaml")[0].train.lr == 8e-6


def test_overrides_validate():
    with pytest.raises(UserError, match="unknown key 'nope'"):
        Config().with_overrides({"nope": 1})
    with pytest.raises(UserError, match="unknown key 'train.nope'"):
        Config().with_overrides({"train.nope": 1})
    with pytest.raises(UserError, match="must be <= 0.9"):
        Config().with_overrides({"val_fraction": 0.95})
