"""Whole copies of Ray's state files and their repair (search/experiment/state_backup.py), on real files."""
import json
import pickle

import pyarrow.fs as pafs
import pytest

from data_pipeline.errors import UserError
from search.experiment.state_backup import BACKUP_DIR, backup, damaged, intact, repair
from search.experiment.layout import check_state
from search.experiment.state_trust import SIGNATURES

STATE = json.dumps({"trial_data": [], "runner_data": {"x": 1}}).encode()
PKL = pickle.dumps({"searcher": {"n": 3, "name": "optuna"}, "list": list(range(100))})


def test_intact_tells_whole_from_cut_files():
    assert intact("experiment_state-a.json", STATE) and intact("tuner.pkl", PKL)
    for cut in (b"", STATE[:-1], STATE[: len(STATE) // 2]):
        assert not intact("experiment_state-a.json", cut)
    for cut in (b"", PKL[:-1], PKL[: len(PKL) // 2]):
        assert not intact("searcher-state-a.pkl", cut)
    assert intact("search_gen_state-a.json", PKL)  # Ray writes this pickle under a .json name


def test_repair_puts_back_only_damaged_files(tmp_path):
    fs, exp = pafs.LocalFileSystem(), str(tmp_path)
    files = {"experiment_state-a.json": STATE, "searcher-state-a.pkl": PKL, "tuner.pkl": PKL}
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    backup(fs, exp, {**files, "result.json": b"{}", "search_gen_state-a.json": b"{cut"})
    copies = sorted(p.name for p in (tmp_path / BACKUP_DIR).iterdir() if p.name != SIGNATURES)
    assert copies == sorted(files)  # no others, no cut ones
    assert repair(fs, exp) == [] and damaged(fs, exp) == []
    (tmp_path / "experiment_state-a.json").write_bytes(STATE[:10])
    (tmp_path / "tuner.pkl").write_bytes(b"")
    (tmp_path / "searcher-state-a.pkl").unlink()
    newer = STATE.replace(b"1", b"2")
    assert damaged(fs, exp) == ["experiment_state-a.json", "tuner.pkl"]
    assert repair(fs, exp) == ["experiment_state-a.json", "searcher-state-a.pkl", "tuner.pkl"]
    assert all((tmp_path / n).read_bytes() == d for n, d in files.items())
    (tmp_path / "experiment_state-a.json").write_bytes(newer)  # a whole live file is newer than its copy: kept
    assert repair(fs, exp) == [] and (tmp_path / "experiment_state-a.json").read_bytes() == newer


def test_resume_refuses_cut_state_without_a_copy(tmp_path):
    (tmp_path / "experiment_state-a.json").write_bytes(STATE)
    backup(pafs.LocalFileSystem(), str(tmp_path), {"experiment_state-a.json": STATE})  # signed: a search of ours
    (tmp_path / "experiment_state-b.json").write_bytes(STATE[:5])  # the newest, as Ray would pick it
    with pytest.raises(UserError, match=r"experiment_state-b.json are empty or cut off .*mmsa search --name NEW"):
        check_state(str(tmp_path), log=lambda *a: None)
    (tmp_path / "experiment_state-b.json").unlink()
    check_state(str(tmp_path), log=lambda *a: None)  # older, whole state: nothing to say


EVIL = b"cos\nsystem\n(S'touch PWNED'\ntR."  # a pickle that runs a shell command when loaded


def test_foreign_state_files_are_put_back_or_refused_never_loaded(tmp_path, monkeypatch):
    """A state file this user's search did not write (no matching HMAC) is replaced by the signed backup copy, or
    the resume is refused; it is never unpickled (search/experiment/state_trust.py)."""
    from search.experiment.state_backup import verify

    monkeypatch.chdir(tmp_path)
    fs, exp = pafs.LocalFileSystem(), str(tmp_path)
    files = {"experiment_state-a.json": STATE, "tuner.pkl": PKL}
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    backup(fs, exp, files)
    assert verify(fs, exp) == ([], [])
    (tmp_path / "tuner.pkl").write_bytes(EVIL)  # someone with write access to the shared experiment
    (tmp_path / "searcher-state-z.pkl").write_bytes(EVIL)  # a planted newer-looking file with no copy
    assert intact("tuner.pkl", EVIL)  # a whole pickle: the crash repair alone would keep it
    with pytest.raises(UserError, match=r"searcher-state-z.pkl were not written by a search of yours.*--trust-state"):
        check_state(exp, log=lambda *a: None)
    assert (tmp_path / "tuner.pkl").read_bytes() == PKL  # put back from the signed copy
    (tmp_path / "searcher-state-z.pkl").unlink()
    (tmp_path / BACKUP_DIR / "tuner.pkl").write_bytes(EVIL)  # the copy is forged too
    (tmp_path / "tuner.pkl").write_bytes(EVIL)
    with pytest.raises(UserError, match="tuner.pkl were not written"):
        check_state(exp, log=lambda *a: None)
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "tuner.pkl").write_bytes(PKL)
    (tmp_path / BACKUP_DIR / SIGNATURES).unlink()  # an experiment from another machine: nothing signed here
    with pytest.raises(UserError, match="--trust-state"):
        check_state(exp, log=lambda *a: None)
    check_state(exp, log=lambda *a: None, trust=True)  # the user vouches for it: signed as it is
    check_state(exp, log=lambda *a: None)


def test_result_rows_of_any_shape_are_skipped_not_a_traceback(tmp_path):
    """A hand-edited, foreign or random-bytes result.json: rows without a whole-number epoch and numeric metrics are
    dropped like a line cut short, by every reader (status, export, report, resume's repair, a finished trial's
    replay). A NaN loss (a diverged epoch) is a number and stays."""
    import json

    import pyarrow.fs as pafs

    from search.trial.ended_trial import _logged_rows
    from search.experiment.trial_backup import NUMBERS, RESULTS, TRIAL_BACKUPS, by_epoch, parse_rows

    def row(epoch, **kw):
        return json.dumps({"epoch": epoch, **{k: 0.5 for k in NUMBERS}, **kw}).encode() + b"\n"

    data = (row(1) + row([2]) + row("3") + row(True) + row(0) + row(2, val_loss="x") + row(2, val_acc="x")
            + row(2, best_val_loss="0.4") + row(2, val_acc=None) + b'{"epoch": 2, "val_loss": 0.4}\n[1, 2]\n\xff\xfe\x00\n'
            + row(2, val_loss=0.45) + row(3, val_loss=float("nan")) + b'{"epoch": 4')
    rows = by_epoch(parse_rows(data))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[1]["val_loss"] == 0.45 and rows[2]["val_loss"] != 0.5
    trial = tmp_path / "trial_x"
    (tmp_path / TRIAL_BACKUPS / trial.name).mkdir(parents=True)
    trial.mkdir()
    (trial / RESULTS).write_bytes(data)
    (tmp_path / TRIAL_BACKUPS / trial.name / RESULTS).write_bytes(row(4))
    local = pafs.LocalFileSystem()
    assert [r["epoch"] for r in _logged_rows(local, str(trial))] == [1, 2, 3, 4]  # the live file and the copy merged
    (trial / RESULTS).unlink()
    assert [r["epoch"] for r in _logged_rows(local, str(trial))] == [4]
