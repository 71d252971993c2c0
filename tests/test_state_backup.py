"""Whole copies of Ray's state files and their repair (search/state_backup.py), on real files."""
import json
import pickle

import pyarrow.fs as pafs
import pytest

from data_pipeline.errors import UserError
from search.state_backup import BACKUP_DIR, backup, damaged, intact, repair
from search.experiment import check_state

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
    assert sorted(p.name for p in (tmp_path / BACKUP_DIR).iterdir()) == sorted(files)  # no others, no cut ones
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
    (tmp_path / "experiment_state-b.json").write_bytes(STATE[:5])  # the newest, as Ray would pick it
    with pytest.raises(UserError, match=r"experiment_state-b.json are empty or cut off .*mmsa search --name NEW"):
        check_state(str(tmp_path), log=lambda *a: None)
    (tmp_path / "experiment_state-b.json").unlink()
    check_state(str(tmp_path), log=lambda *a: None)  # older, whole state: nothing to say
