import subprocess
import sys

import pytest

from search.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_top_level_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "search.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: mmsa {command}" in out


def _config_fields():
    import dataclasses

    from model.config import SECTIONS
    from search.settings.space import SearchConfig

    for sec, klass in [*SECTIONS.items(), ("search", SearchConfig)]:
        for f in dataclasses.fields(klass):
            yield sec, f


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_every_run_config_key_is_a_flag_with_its_help(command, capsys):
    """Generated from the typed configs: a new config key appears here without a hand-written argparse line."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for sec, f in _config_fields():
        if sec == "search":
            continue
        flag = "--data" if f.name == "data_dir" else "--" + f.name.replace("_", "-")
        assert flag in out, flag
        assert " ".join(f.metadata["help"].split()) in out, f.name


def test_search_flags_are_the_search_config_keys(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for sec, f in _config_fields():
        if sec == "search":
            assert "--" + f.name.replace("_", "-") in out and " ".join(f.metadata["help"].split()) in out


def test_generated_flags_parse_to_config_keys():
    from search.settings.cli_flags import config_flags

    args = build_parser().parse_args(["train", "--out", "x", "--lr", "3e-5", "--complexity", "high", "--no-bucket-by-length",
                                      "--data", "d", "--image-size", "64"])
    assert config_flags(args) == {"train.lr": 3e-5, "model.complexity": "high", "train.bucket_by_length": False,
                                  "data.data_dir": "d", "data.image_size": 64}
    args = build_parser().parse_args(["search", "--data", "d", "--num-samples", "2", "--name", "n", "--grace-period", "3"])
    assert config_flags(args) == {"data.data_dir": "d", "search.grace_period": 3}


def test_a_new_config_key_becomes_a_flag():
    import argparse
    import dataclasses

    from model.config import opt
    from search.settings.cli_flags import add_config_flags, config_flags

    @dataclasses.dataclass
    class NewSection:
        warmup_steps: int = opt(0, "linear lr warm-up, optimizer steps", lo=0, hi=10_000)
        schedule: str = opt("plateau", "lr schedule", choices=("plateau", "cosine"))

    p = argparse.ArgumentParser()
    add_config_flags(p, NewSection, "train")
    text = " ".join(p.format_help().split())
    assert "--warmup-steps N linear lr warm-up, optimizer steps (default 0; >= 0 and <= 10000)" in text
    assert config_flags(p.parse_args(["--warmup-steps", "5", "--schedule", "cosine"])) == {
        "train.warmup_steps": 5, "train.schedule": "cosine"}
    with pytest.raises(SystemExit):
        p.parse_args(["--schedule", "linear"])  # choices come from the field


def test_flag_values_are_validated_like_config_files(capsys):
    from search.cli import main

    assert main(["train", "--out", "x", "--lr", "-1"]) == 2
    assert "command line: train.lr: -1.0 must be > 0.0" in capsys.readouterr().err
    assert main(["search", "--data", "d", "--num-samples", "1", "--name", "n", "--reduction-factor", "1"]) == 2
    assert "search.reduction_factor: 1 must be >= 2" in capsys.readouterr().err
