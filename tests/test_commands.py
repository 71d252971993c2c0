"""Issue 22, the commands: an experiment is opened once per command (its metadata file read once), every command
that runs trials makes the same pre-run checks (search/tune/prerun.py), and options shared by subcommands are declared
once (search/settings/cli_flags.py OPTIONS)."""
from __future__ import annotations

import argparse
import fcntl
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from search.experiment import layout as experiment
from search.cli import build_parser, main
from search.settings.cli_flags import OPTIONS
from search.selection.opened import Experiment
from tests.fixtures.make_old_experiment import DATA_ROOT, FIXTURE, KEY_FILE, ensure_inputs
from tests.test_confirm import fake_confirmation
from tests.test_intervals import fake_experiment


@pytest.fixture
def meta_reads(monkeypatch) -> Counter:
    """How often each experiment's metadata file is read, counted at the one function that reads it."""
    reads: Counter = Counter()
    real = experiment._load_meta

    def counted(exp):
        reads[str(Path(str(exp)).resolve())] += 1
        return real(exp)

    monkeypatch.setattr(experiment, "_load_meta", counted)
    return reads


def _once_each(reads: Counter, *exps) -> None:
    assert reads, "no metadata was read"
    assert all(n == 1 for n in reads.values()), dict(reads)
    for e in exps:
        assert reads[str(Path(e).resolve())] == 1, (e, dict(reads))


# ---- one Experiment per command ------------------------------------------------------------------------------
def test_status_export_report_read_the_metadata_once(tmp_path, meta_reads, capsys):
    exp = fake_experiment(tmp_path)
    cexp = fake_confirmation(exp)
    assert main(["confirm", str(exp), "--top", "2", "--seeds", "2"]) == 0  # finished: writes its evidence, no Ray
    for argv in (["status", str(exp)], ["export", str(exp), "-o", str(tmp_path / "best.yaml")], ["report", str(exp)]):
        meta_reads.clear()
        assert main(argv) == 0, capsys.readouterr().err
        _once_each(meta_reads, exp, cexp)  # the search's and its confirmation's, once each
    assert "confirmed choice" in capsys.readouterr().out


def test_confirm_of_a_finished_confirmation_reads_each_metadata_once(tmp_path, meta_reads):
    exp = fake_experiment(tmp_path)
    cexp = fake_confirmation(exp)
    meta_reads.clear()
    assert main(["confirm", str(exp), "--top", "2", "--seeds", "2"]) == 0  # finished: evidence rewritten, no Ray
    _once_each(meta_reads, exp, cexp)


def test_experiment_reads_trials_once_and_again_on_request(tmp_path):
    from tests.test_intervals import write_trial

    exp = Experiment(fake_experiment(tmp_path))
    first = exp.trials
    assert exp.trials is first
    write_trial(Path(exp.path), "late", first[0].config, first[0].results)
    assert len(exp.trials) == len(first)  # the cached view
    assert len(exp.fresh_trials()) == len(first) + 1 and len(exp.trials) == len(first) + 1


@pytest.fixture(scope="module")
def inputs():
    """The old fixture experiment's data and tiny models, at the absolute path it recorded."""
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with open(DATA_ROOT.parent / f"{DATA_ROOT.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_inputs()


def _old_experiment(dest: Path, monkeypatch) -> Path:
    shutil.copytree(FIXTURE, dest, symlinks=True)
    key = dest.parent / "state.key"
    shutil.copyfile(KEY_FILE, key)
    key.chmod(0o600)
    monkeypatch.setenv("MMSA_STATE_KEY", str(key))
    return dest


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


def _refused(capsys, *named) -> str:
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in named:
        assert n in lines[0], (n, err)
    return lines[0]


# ---- the pre-run checks: resume makes search's ---------------------------------------------------------------
def test_resume_refuses_a_missing_backbone_before_ray(tmp_path, monkeypatch, capsys, inputs):
    exp = _old_experiment(tmp_path / "rr" / "v1", monkeypatch)
    meta = yaml.safe_load((exp / experiment.META).read_text())
    gone = tmp_path / "gone-bert"
    meta["spec"]["fixed"]["model"]["text_model"] = str(gone)
    (exp / experiment.META).write_text(yaml.safe_dump(meta, sort_keys=False))
    before = sorted(p.name for p in exp.iterdir())
    ray_before = _ray_started()
    assert main(["resume", str(exp), "--verbose", "0"]) == 2
    _refused(capsys, str(gone))
    assert ray_before or not _ray_started()
    assert sorted(p.name for p in exp.iterdir()) == before  # no lease, nothing written


def test_resume_refuses_a_read_only_experiment_before_ray(tmp_path, monkeypatch, capsys, inputs):
    from conftest import tmpfs

    with tmpfs(tmp_path / "ro", "50m") as mnt:
        exp = _old_experiment(mnt / "rr" / "v1", monkeypatch)
        monkeypatch.setenv("MMSA_STATE_KEY", str(shutil.copyfile(KEY_FILE, tmp_path / "k")))  # outside the mount
        (tmp_path / "k").chmod(0o600)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        ray_before = _ray_started()
        assert main(["resume", str(exp), "--verbose", "0"]) == 2
        line = _refused(capsys, str(exp), "not writable", "Read-only file system")
        assert "relocatable" in line
        assert ray_before or not _ray_started()


@pytest.mark.slow
def test_a_whole_resume_reads_the_metadata_once(tmp_path, monkeypatch, meta_reads, inputs):
    """cmd_resume -> resume_search -> ASHA replay -> the end-of-run summary used to read it five times."""
    from search.selection.results import load_trials

    exp = _old_experiment(tmp_path / "rr" / "v1", monkeypatch)
    meta_reads.clear()
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    _once_each(meta_reads, exp)
    assert all(t.state == "TERMINATED" for t in load_trials(exp))


# ---- options declared once -----------------------------------------------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


def test_every_shared_option_comes_from_the_one_table():
    flags = {o.flag: o for o in OPTIONS.values()}
    seen: dict[str, set] = {}
    for command, p in _subparsers().items():
        for a in p._actions:
            names = a.option_strings or [a.dest]
            for o in (flags[n] for n in names if n in flags):
                if o.flag == "experiment" and a.dest != "experiment":
                    continue
                assert a.help == o.help_text(), (command, o.flag)
                assert a.default == (False if o.kind is None else o.default), (command, o.flag)
                assert a.type is (None if o.kind is None else o.kind), (command, o.flag)
                seen.setdefault(o.flag, set()).add(command)
    # the options the issue named, each on every command that takes it, from the table
    assert seen["--overwrite"] >= {"train", "predict", "ablate", "export", "refine", "make-demo-data",
                                   "make-tiny-pretrained", "fetch-pretrained"}
    assert seen["--address"] == seen["--verbose"] == {"search", "refine", "resume", "confirm"}
    assert seen["--optuna-storage"] == {"demo", "search", "refine"}
    assert seen["--mlflow"] == {"search", "refine", "resume"}  # every command that runs a search
    assert seen["--top"] == {"refine", "confirm"}
    assert seen["--shared-storage"] == {"search", "resume", "refine", "confirm"}  # every command that runs trials
    assert seen["experiment"] == {"refine", "resume", "confirm", "status", "report", "export"}


def test_config_defaults_are_read_from_the_config():
    from model.config import DataConfig

    p = _subparsers()["check-data"]
    text = " ".join(p.format_help().split())
    for f in ("val_fraction", "split_seed"):
        assert f"(default {getattr(DataConfig(), f)!r}" in text
    from search.settings.cli_flags import config_flags

    assert config_flags(build_parser().parse_args(["check-data", "d"])) == {}  # unset: the config's own default


BAD = [
    (["confirm", "{e}", "--top", "0"], "--top 0: must be a whole number from 1 to 100"),
    (["refine", "{e}", "--top", "101", "--dry-run"], "--top 101: must be a whole number from 1 to 100"),
    (["confirm", "{e}", "--seeds", "101"], "--seeds 101"),
    (["resume", "{e}", "--verbose", "5"], "--verbose 5: must be a whole number from 0 to 2"),
    (["confirm", "{e}", "--verbose", "-1"], "--verbose -1"),
    (["search", "--data", "{t}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--verbose", "3"],
     "--verbose 3"),
    (["search", "--data", "{t}", "--num-samples", "0", "--name", "n", "--storage", "{t}/rr"],
     "--num-samples 0: must be a whole number of trials from 1 to 100000"),
    (["demo", "--out", "{t}/demo", "--num-samples", "0"], "--num-samples 0"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_a_bad_option_value_is_one_error_line_before_any_work(tmp_path, capsys, meta_reads, argv, message):
    exp = fake_experiment(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main([a.format(e=exp, t=tmp_path) for a in argv]) == 2
    _refused(capsys, message)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not meta_reads  # refused before the experiment was opened


# ---- an experiment at a URI ------------------------------------------------------------------------------------
def test_reading_an_experiment_at_a_uri_leaves_no_temporary_copy(tmp_path, monkeypatch, capsys):
    """Each read of an s3:// (or file://) experiment copies its small files to a temporary folder; that copy used to
    stay in /tmp after every `mmsa status`, `export` or report (220 of them after a day of CI here)."""
    import tempfile

    from search.selection.results import load_trials

    exp = _old_experiment(tmp_path / "rr" / "v1", monkeypatch)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with experiment.local_dir(f"file://{exp}") as copy:  # the copy is made where the test looks
        assert copy.parent == scratch and (copy / experiment.META).is_file()
    assert list(scratch.iterdir()) == []
    trials = load_trials(f"file://{exp}")
    assert sorted(t.path.name for t in trials) == sorted(p.name for p in exp.glob("trial_*"))
    assert all(t.results for t in trials)
    assert main(["status", f"file://{exp}"]) == 0
    assert "trial" in capsys.readouterr().out
    assert list(scratch.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the copy is read: removed too
        with experiment.local_dir(f"file://{exp}") as copy:
            assert copy.parent == scratch
            raise KeyboardInterrupt
    assert list(scratch.iterdir()) == []
    from conftest import tmpfs

    (exp / "trial_zz").mkdir()  # a copy that fails half-way: its disk fills on a 2 MiB results file
    (exp / "trial_zz" / "result.json").write_text(('{"epoch": 1}\n' * 200_000))
    with tmpfs(tmp_path / "tiny", "512k") as tiny:
        monkeypatch.setattr(tempfile, "tempdir", str(tiny))
        with pytest.raises(OSError):
            with experiment.local_dir(f"file://{exp}"):
                pass
        assert list(tiny.iterdir()) == []
    shutil.rmtree(exp / "trial_zz")
    for params in exp.glob("trial_*/params.json"):  # an error about a trial's file names it where it is
        params.write_text(params.read_text().replace("{", '{"bogus": {}, ', 1))
    capsys.readouterr()
    assert main(["export", f"file://{exp}", "-o", str(tmp_path / "best.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{exp}/trial_" in err and "params.json" in err and "mmsa-exp-" not in err, err
