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
        ("train:\n  lr: .nan\n", "train.lr: expected a finite number, got nan"),
        ("train:\n  rotation: .inf\n", "train.rotation: expected a finite number, got inf"),
        ("train:\n  device: gpu0\n", "train.device: 'gpu0' is not valid; expected auto, cpu, cuda or cuda:N"),
        ("train:\n  batch_size: 16\n  micro_batch_size: 32\n", "train.micro_batch_size 32 is larger than train.batch_size 16"),
        ("train: [1, 2]\n", "section 'train' must be a mapping"),
        ("1: x\nb: y\n", "unknown section(s) ['1', 'b']"),
        ("train:\n  lr: " + "x" * 5000 + "\n", "expected a number, got 'xxxx"),
        ("a: &a [*a]\n", "a YAML alias refers to a node that contains it"),
        ("\xff\xfe", "not a UTF-8 text file"),
        ("train: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, yaml_text, message):
    (tmp_path / "c.yaml").write_bytes(yaml_text.encode("latin-1") if "\xff" in yaml_text else yaml_text.encode())
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "c.yaml")
    assert message in str(e.value)
    assert len(str(e.value)) < 400  # one readable line, whatever the file held


def test_yaml_alias_bomb_refused_quickly(tmp_path):
    # The "billion laughs": 9 levels of 9 aliases, 342 bytes, 387 million strings once expanded.
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="bomb.yaml: YAML expands to more than 100000 values"):
        load_config(tmp_path / "bomb.yaml")


def test_small_aliases_still_allowed(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: &lr 1.0e-5\n  weight_decay: *lr\n")
    assert load_config(tmp_path / "c.yaml")[0].train.weight_decay == 1e-5


def test_oversized_or_folder_config_refused(tmp_path):
    (tmp_path / "big.yaml").write_text("# pad\n" * 300_000)
    with pytest.raises(UserError, match="big.yaml: .* bytes; a YAML config file is a few KiB"):
        load_config(tmp_path / "big.yaml")
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)


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


@pytest.mark.parametrize("section, message", [
    ("search:\n  best_epoch: three\n", "e.yaml: search.best_epoch: expected an integer, got 'three'"),
    ("search:\n  best_epoch: 2\n  best_epochs: 3\n", "e.yaml: search: unknown key(s) ['best_epochs']"),
    ("search:\n  best_epoch: -1\n", "search.best_epoch: -1 must be >= 0"),
    ("search: [1]\n", "e.yaml: search: expected a mapping"),
])
def test_hand_edited_export_section_refused(tmp_path, section, message):
    from search.commands.export import load_run_config

    (tmp_path / "e.yaml").write_text("train:\n  lr: 1.0e-5\n" + section)
    with pytest.raises(UserError) as e:
        load_run_config(tmp_path / "e.yaml")
    assert message in str(e.value)


def test_export_section_best_epoch_sets_epochs(tmp_path):
    from search.commands.export import load_run_config

    (tmp_path / "e.yaml").write_text("search:\n  best_epoch: 2\n  metrics: {val_loss: 0.5}\n  checkpoint: null\n")
    assert load_run_config(tmp_path / "e.yaml").train.epochs == 2
