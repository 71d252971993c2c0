"""Issue 21, trust: the state-signing key, confirmation evidence, leases and damaged files of mmsa's own kinds, each
planted the way a user who can write the experiment folder (or a full disk, or a kill) would leave it.

The plant functions at the top (EXP_PLANTS, KEY_PLANTS) are the hostile files of this part; the generated table of
tests/test_untrusted_experiment.py can run them against every command. The tests below check what each must do."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_pipeline.errors import UserError
from model.config import Config
from search.commands import confirm
from search.experiment import lock as L, state_trust as T
from search.trial.async_checkpoint import ENDED_FILE, POINTER_FILE, ended_verdict, read_pointer
from search.trial.checkpoint_retention import METRICS_FILE, PIN_FILE
from search.cli import main
from search.selection.confirm_files import EVIDENCE, checked_evidence
from search.selection.results import load_trials
from search.experiment.state_backup import BACKUP_DIR
from search.experiment.state_trust import SIGNATURES
from search.experiment.trial_backup import TRIAL_BACKUPS
from tests.test_confirm import fake_confirmation
from tests.test_intervals import fake_experiment, rows_with, write_trial


# ---- plants in an experiment folder: fn(exp) -----------------------------------------------------------------
def plant_forged_confirm(exp: Path) -> None:
    """A confirm.json no confirmation wrote: trial a's id, another lr, an epoch count and a model of its own."""
    cfg = Config().with_overrides({"train.lr": 0.5}).to_dict()
    cfg["model"]["text_model"] = "/tmp/evil-model"
    c = {"trial_id": "a", "config": cfg, "chosen": True, "epochs": 77, "runs": 3, "seeds": [1, 2, 3],
         "val_loss_at_epochs": 0.01, "val_acc_at_epochs": 0.99, "val_f1_at_epochs": 0.99, "train_loss_at_epochs": 0.01,
         "best_val_loss_mean": 0.01, "best_val_loss_std": 0.0, "best_val_acc_mean": 0.99, "best_val_acc_std": 0.0,
         "search_best_val_loss": 0.5}
    (exp / EVIDENCE).write_text(json.dumps({"experiment": str(exp), "top": 1, "seeds": 3, "trials": 3,
                                            "trial_epochs": 9, "chosen": "a", "candidates": [c]}))


def plant_confirm_not_json(exp: Path) -> None:
    (exp / EVIDENCE).write_bytes(b'{"chosen": "a", "candid')


def plant_confirm_deep(exp: Path) -> None:
    (exp / EVIDENCE).write_text("[" * 100_000)  # exhausts the recursion limit of json.loads


def plant_confirm_wrong_shape(exp: Path) -> None:
    (exp / EVIDENCE).write_text(json.dumps({"chosen": "a", "candidates": ["x", 3, None]}))


def _lease(exp: Path, **fields) -> None:
    lease = {"token": "planted", "host": socket.gethostname(), "pid": 1, "command": "mmsa search --name x",
             "started": "2026-01-01T00:00:00", "heartbeat": time.time(), **fields}
    (exp / L.LOCK_FILE).write_text(json.dumps(lease))


def plant_lease_pid1_old(exp: Path) -> None:
    """pid 1 is always alive: only the heartbeat can tell this lease is dead."""
    _lease(exp, heartbeat=time.time() - L.STALE_S - 5)


def plant_lease_future(exp: Path) -> None:
    _lease(exp, heartbeat=time.time() + 10 * 365 * 86400)


def plant_lease_strings(exp: Path) -> None:
    _lease(exp, pid="1", heartbeat="soon", host=["x"], token=7)


def plant_lease_nan_and_huge_pid(exp: Path) -> None:
    (exp / L.LOCK_FILE).write_text('{"token": "t", "host": "h", "pid": 99999999999999999999999, "heartbeat": NaN}')


def plant_lease_not_object(exp: Path) -> None:
    (exp / L.LOCK_FILE).write_text("[1, 2, 3]")


def plant_lease_deep(exp: Path) -> None:
    (exp / L.LOCK_FILE).write_text('{"pid": ' + "[" * 100_000)


def plant_lease_pid_zero(exp: Path) -> None:
    _lease(exp, pid=0)  # os.kill(0, 0) would ask about our own process group


def plant_damaged_signatures(exp: Path) -> None:
    (exp / BACKUP_DIR).mkdir(exist_ok=True)
    (exp / BACKUP_DIR / SIGNATURES).write_text(json.dumps({"tuner.pkl": 5, "x": {"a": [1]}}))


def plant_damaged_state_backup(exp: Path) -> None:
    (exp / BACKUP_DIR).mkdir(exist_ok=True)
    (exp / BACKUP_DIR / "experiment_state-2099-01-01_00-00-00.json").write_bytes(b"\x00\xff{not json")


def _first_trial(exp: Path) -> Path:
    return sorted(p for p in exp.glob("trial_*") if p.is_dir())[0]


def plant_damaged_trial_backup(exp: Path) -> None:
    d = exp / TRIAL_BACKUPS / _first_trial(exp).name
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text("[" * 100_000 + "\n{\"epoch\": \"x\"}\n")
    (d / "params.json").write_text("[" * 100_000)


def plant_damaged_verdict(exp: Path) -> None:
    (_first_trial(exp) / ENDED_FILE).write_text("[" * 100_000)


def plant_damaged_pin_and_metrics(exp: Path) -> None:
    ck = _first_trial(exp) / "checkpoint_000001"
    ck.mkdir(exist_ok=True)
    (ck / PIN_FILE).write_text("{")
    (ck / METRICS_FILE).write_text(json.dumps({"epoch": [1], "val_loss": "low"}))
    (ck / POINTER_FILE).write_text(json.dumps({"state": None, "reported_epoch": 1e400}))


EXP_PLANTS = [plant_forged_confirm, plant_confirm_not_json, plant_confirm_deep, plant_confirm_wrong_shape,
              plant_lease_pid1_old, plant_lease_future, plant_lease_strings, plant_lease_nan_and_huge_pid,
              plant_lease_not_object, plant_lease_deep, plant_lease_pid_zero, plant_damaged_signatures,
              plant_damaged_state_backup, plant_damaged_trial_backup, plant_damaged_verdict,
              plant_damaged_pin_and_metrics]


# ---- plants at the key's path: fn(key) -> the message the refusal must contain --------------------------------
def plant_key_empty(key: Path) -> str:
    key.write_bytes(b"")  # what a full disk left while the key was first written, before keys were made whole
    key.chmod(0o600)
    return "0 bytes long"


def plant_key_short(key: Path) -> str:
    key.write_bytes(b"secret")
    key.chmod(0o600)
    return "6 bytes long"


def plant_key_readable_by_others(key: Path) -> str:
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    return "chmod 600"


def plant_key_folder(key: Path) -> str:
    key.mkdir()
    return "is not a file"


def plant_key_fifo(key: Path) -> str:
    os.mkfifo(key, 0o600)
    return "is not a file"


def plant_key_link_to_others_file(key: Path) -> str:
    """The key replaced by a link to a file another user owns (and so knows)."""
    target = key.parent / "their.key"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    os.chown(target, 12345, 12345)
    key.symlink_to(target)
    return "belongs to another user"


def plant_key_zeros(key: Path) -> str:
    """Long enough and owner-only, but guessable: a zero-filled or preallocated file left where the key should be."""
    key.write_bytes(b"\0" * 64)
    key.chmod(0o600)
    return "distinct byte values"


KEY_PLANTS = [plant_key_empty, plant_key_short, plant_key_readable_by_others, plant_key_folder, plant_key_fifo,
              plant_key_zeros]
if os.geteuid() == 0:  # only root can give a file to another user
    KEY_PLANTS.append(plant_key_link_to_others_file)


# ---- the key ------------------------------------------------------------------------------------------------------
@pytest.fixture
def key(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "keys" / "state.key"
    monkeypatch.setenv(T.KEY_ENV, str(path))
    return path


def test_a_new_key_is_whole_private_and_announced_once(key, capsys):
    first = T._key()
    assert len(first) == T.KEY_BYTES and stat.S_IMODE(key.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert str(key) in err and T.KEY_ENV in err and err.count("\n") == 1
    assert T._key() == first and capsys.readouterr().err == ""  # used, not announced again
    assert [p.name for p in key.parent.iterdir()] == ["state.key"]  # no temporary file left


@pytest.mark.parametrize("plant", KEY_PLANTS, ids=lambda f: f.__name__)
def test_weak_or_foreign_keys_are_refused_with_what_to_do(key, plant):
    key.parent.mkdir(parents=True)
    why = plant(key)
    with pytest.raises(UserError, match=why) as e:
        T.sign("tuner.pkl", b"data")
    assert str(key) in str(e.value) and "\n" not in str(e.value)


def test_a_weak_key_is_refused_by_the_cli_before_any_work(key, tmp_path, demo_dir):
    key.parent.mkdir(parents=True)
    plant_key_empty(key)
    r = subprocess.run([sys.executable, "-m", "search.cli", "search", "--data", str(demo_dir), "--num-samples", "1",
                        "--name", "k", "--storage", str(tmp_path / "rr")], capture_output=True, text=True,
                       env={**os.environ, T.KEY_ENV: str(key)}, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {key}: ") and "0 bytes long" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "rr" / "k").exists()


def test_home_that_is_not_a_folder_is_a_clear_error_not_an_import_traceback(tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.delenv(T.KEY_ENV)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(UserError, match=f"set {T.KEY_ENV}="):
        T.key_path()
    exp = fake_experiment(tmp_path)  # status needs no key: it must work whatever HOME is
    r = subprocess.run([sys.executable, "-m", "search.cli", "status", str(exp)], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != T.KEY_ENV} | {"HOME": str(home)}, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


_MAKE_KEY = "import sys; from search import state_trust as T; sys.stdout.write(T._key().hex())"


def test_processes_creating_the_key_at_once_all_use_the_same_one(key):
    procs = [subprocess.Popen([sys.executable, "-c", _MAKE_KEY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o for o, _ in outs}) == 1 and bytes.fromhex(outs[0][0]) == key.read_bytes()
    assert sum("created a new key" in e for _, e in outs) == 1  # only the process whose key it is says so


@pytest.mark.parametrize("how", ["killed", "full"])
def test_a_write_cut_short_never_leaves_a_short_key(key, how):
    """The disk fills (EFBIG past a 10-byte file size limit) or the process is killed (SIGXFSZ) mid-write."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))

    # Python ignores SIGXFSZ from its start: the killed case asks for the default (death) again
    kill = "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); " if how == "killed" else ""
    r = subprocess.run([sys.executable, "-c", kill + _MAKE_KEY], capture_output=True, text=True, preexec_fn=limit,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)
    if how == "full":
        assert r.returncode == 1 and "cannot be created" in r.stderr and "Traceback" in r.stderr  # raised UserError
    else:
        assert r.returncode == -signal.SIGXFSZ
    assert not key.exists()
    assert len(T._key()) == T.KEY_BYTES  # the next use makes a whole key


# ---- leases -------------------------------------------------------------------------------------------------------
def test_pid_1_blocks_only_while_its_heartbeat_is_fresh(tmp_path):
    _lease(tmp_path)
    with pytest.raises(UserError, match="pid 1 on .*--break-lock"):
        L.ExperimentLock(str(tmp_path), "mmsa resume x").acquire()
    plant_lease_pid1_old(tmp_path)
    assert "s old" in L.why_stale(L.read_lease(str(tmp_path)))
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        assert json.loads((tmp_path / L.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_heartbeat_in_the_future_is_not_trusted(tmp_path):
    _lease(tmp_path, heartbeat=time.time() + L.CLOCK_SKEW_S / 2)  # within clock skew: counts
    assert L.holder(L.read_lease(str(tmp_path))) is not None
    plant_lease_future(tmp_path)
    assert "in the future" in L.why_stale(L.read_lease(str(tmp_path)))
    with L.ExperimentLock(str(tmp_path), "mmsa resume x"):
        pass


@pytest.mark.parametrize("plant", [plant_lease_strings, plant_lease_nan_and_huge_pid, plant_lease_not_object,
                                   plant_lease_deep, plant_lease_pid_zero], ids=lambda f: f.__name__)
def test_malformed_leases_hold_nothing_and_crash_nothing(tmp_path, plant, capsys):
    exp = fake_experiment(tmp_path)
    plant(exp)
    lease = L.read_lease(str(exp))
    assert L.holder(lease) is None and "damaged" in L.why_stale(lease)
    L.describe(lease)
    assert main(["status", str(exp)]) == 0 and "running now" not in capsys.readouterr().out
    assert main(["export", str(exp), "-o", str(tmp_path / "b.yaml")]) == 0
    with L.ExperimentLock(str(exp), "mmsa resume x"):
        pass


def test_break_lock_takes_a_live_lease_naming_its_holder_and_the_holder_stops(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMSA_TEST_HEARTBEAT_S", "0.2")
    lost = []
    first = L.ExperimentLock(str(tmp_path), "mmsa search --name a", on_lost=lambda: lost.append(1)).acquire()
    with L.ExperimentLock(str(tmp_path), "mmsa resume x", break_lock=True) as second:
        time.sleep(1.0)  # the first holder's beat sees the new token: it stops, and stops writing the lease
        err = capsys.readouterr().err
        assert f"held by `mmsa search --name a` (pid {os.getpid()}" in err
        assert lost == [1] and "taken over by `mmsa resume x`" in err
        assert L.read_lease(str(tmp_path))["token"] == second.token
    first.release()


def test_break_lock_wins_over_a_renewal_that_lands_on_its_write(tmp_path, capsys):
    """The holder read its own lease just before the breaker wrote and renews it just after (CI hit this): the
    breaker writes again and goes on, instead of failing with 'another process took the experiment'."""
    import threading

    _lease(tmp_path, pid=os.getpid(), host=socket.gethostname())
    old = (tmp_path / L.LOCK_FILE).read_bytes()
    renewed = []

    def late_renewal():  # the one in-flight write of a holder that has not yet seen the breaker's token
        deadline = time.time() + 10
        while time.time() < deadline and not renewed:
            if (tmp_path / L.LOCK_FILE).read_bytes() != old:
                (tmp_path / L.LOCK_FILE).write_bytes(old)
                renewed.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=late_renewal)
    t.start()
    with L.ExperimentLock(str(tmp_path), "mmsa resume x", break_lock=True) as second:
        t.join()
        assert renewed and L.read_lease(str(tmp_path))["token"] == second.token


def test_a_holder_that_lost_its_lease_stops_like_ctrl_c(tmp_path):
    """The default on_lost: a real process holding the lease gets SIGINT's handler run when another takes it."""
    code = ("import signal, sys, time; from search import lock as L\n"
            "signal.signal(signal.SIGINT, lambda *a: (print('stopping', flush=True), sys.exit(130)))\n"
            f"L.ExperimentLock({str(tmp_path)!r}, 'mmsa search --name a').acquire()\n"
            "print('holding', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MMSA_TEST_HEARTBEAT_S": "0.2"})
    assert proc.stdout.readline() == "holding\n"
    with L.ExperimentLock(str(tmp_path), "mmsa resume x", break_lock=True):
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "stopping" in out and "taken over by `mmsa resume x`" in err, err


def test_break_lock_flag_on_the_writers():
    from search.cli import build_parser

    for cmd in (["search", "--num-samples", "1", "--name", "x"], ["resume", "e"], ["confirm", "e"], ["refine", "e"]):
        assert build_parser().parse_args([*cmd, "--break-lock"]).break_lock


# ---- evidence -----------------------------------------------------------------------------------------------------
@pytest.fixture
def confirmed(tmp_path) -> Path:
    exp = fake_experiment(tmp_path)
    fake_confirmation(exp)
    confirm.write_evidence(str(exp))
    return exp


def _export(exp: Path, capsys) -> tuple[dict, str]:
    out = exp.parent / "best.yaml"
    assert main(["export", str(exp), "-o", str(out), "--overwrite"]) == 0
    return yaml.safe_load(out.read_text()), capsys.readouterr().out


def test_genuine_evidence_is_exported(confirmed, capsys):
    doc, _ = _export(confirmed, capsys)
    assert doc["search"]["selection"] == "confirmed" and doc["search"]["trial_id"] == "b"


def test_evidence_from_an_older_mmsa_without_newer_keys_is_exported(confirmed, capsys):
    """A confirmation written before a metric was added lacks keys the recomputation has: still evidence, since each
    value it does state is reproduced (what is exported is the recomputation)."""
    ev = json.loads((confirmed / EVIDENCE).read_text())
    ev.pop("metric", None)
    for c in ev["candidates"]:
        c.pop("val_f1_at_epochs", None)
    (confirmed / EVIDENCE).write_text(json.dumps(ev))
    doc, _ = _export(confirmed, capsys)
    assert doc["search"]["selection"] == "confirmed" and doc["search"]["trial_id"] == "b"


def test_forged_evidence_without_a_confirmation_is_not_exported(tmp_path, capsys):
    exp = fake_experiment(tmp_path)
    plant_forged_confirm(exp)
    doc, out = _export(exp, capsys)
    assert doc["search"].get("selection", "best trial") == "best trial" and doc["train"]["epochs"] != 77
    assert doc["train"]["lr"] == pytest.approx(1e-4) and doc["model"]["text_model"] != "/tmp/evil-model"
    assert "confirm.json is not used: there is no confirmation experiment" in out
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "**Not used:**" in md and "0.9900" not in md


def _edit_chosen(exp: Path, **changes) -> None:
    ev = json.loads((exp / EVIDENCE).read_text())
    c = next(c for c in ev["candidates"] if c["chosen"])
    for k, v in changes.items():
        if k == "lr":
            c["config"]["train"]["lr"] = v
        else:
            c[k] = v
    (exp / EVIDENCE).write_text(json.dumps(ev))


@pytest.mark.parametrize("changes", [{"epochs": 2}, {"val_loss_at_epochs": 0.1}, {"lr": 0.5},
                                     {"best_val_acc_std": 0.0}], ids=str)
def test_evidence_its_confirmation_does_not_reproduce_is_not_exported(confirmed, capsys, changes):
    """Forged numbers beside a real confirmation: one changed number, or the chosen configuration's lr, is enough."""
    _edit_chosen(confirmed, **changes)
    doc, out = _export(confirmed, capsys)
    assert doc["search"].get("selection", "best trial") == "best trial" and "confirm.json is not used" in out
    assert main(["status", str(confirmed)]) == 0
    assert "confirm.json is not used" in capsys.readouterr().out


def test_a_confirmation_of_other_configurations_is_not_evidence(confirmed, capsys):
    """EXP/confirm itself planted: its candidates (and trials) name trial a but with another configuration."""
    cm_path = confirmed / "confirm" / "mmsa_search.yaml"
    cm = yaml.safe_load(cm_path.read_text())
    for c in cm["candidates"]:
        c["config"]["model"]["dropout"] = 0.42
    cm_path.write_text(yaml.safe_dump(cm))
    for p in (confirmed / "confirm").glob("trial_*/params.json"):
        p.write_text(json.dumps({**json.loads(p.read_text()), "model": {
            **json.loads(p.read_text())["model"], "dropout": 0.42}}))
    confirm.write_evidence(str(confirmed))  # consistent with the planted confirmation
    ev, why = checked_evidence(str(confirmed), load_trials(confirmed))
    assert ev is None and "not those of this search's trials" in why
    doc, _ = _export(confirmed, capsys)
    assert doc["search"].get("selection", "best trial") == "best trial"


@pytest.mark.parametrize("plant", [plant_confirm_not_json, plant_confirm_deep, plant_confirm_wrong_shape],
                         ids=lambda f: f.__name__)
def test_damaged_evidence_is_a_note_in_export_status_and_report(confirmed, capsys, plant):
    plant(confirmed)
    doc, out = _export(confirmed, capsys)
    assert doc["search"].get("selection", "best trial") == "best trial" and "not used" in out
    assert main(["status", str(confirmed)]) == 0 and "not used" in capsys.readouterr().out
    assert main(["report", str(confirmed)]) == 0
    assert "**Not used:**" in (confirmed / "report.md").read_text()


# ---- damaged files of mmsa's other kinds ----------------------------------------------------------------------------
@pytest.mark.parametrize("plant", [plant_damaged_signatures, plant_damaged_state_backup, plant_damaged_trial_backup,
                                   plant_damaged_verdict, plant_damaged_pin_and_metrics], ids=lambda f: f.__name__)
def test_damaged_files_are_read_without_a_traceback(tmp_path, plant, capsys):
    exp = fake_experiment(tmp_path)
    plant(exp)
    assert main(["status", str(exp)]) == 0
    assert main(["export", str(exp), "-o", str(tmp_path / "b.yaml")]) == 0
    assert {t.trial_id for t in load_trials(exp)} >= {"a", "b", "c"}


def test_damaged_verdict_pointer_and_signatures_read_as_nothing(tmp_path):
    exp = fake_experiment(tmp_path)
    plant_damaged_verdict(exp)
    assert ended_verdict(exp / "trial_a") is None
    plant_damaged_pin_and_metrics(exp)
    with pytest.raises(UserError, match=f"{POINTER_FILE} is damaged"):
        read_pointer(exp / "trial_a" / "checkpoint_000001")
    plant_damaged_signatures(exp)
    from search.experiment import storage

    fs, path = storage.filesystem(str(exp))
    sigs = T.read_signatures(fs, f"{path}/{BACKUP_DIR}")
    assert not T.signed(sigs, "tuner.pkl", b"x")
    T.add_signatures(fs, f"{path}/{BACKUP_DIR}", {"tuner.pkl": b"x"})  # a damaged entry is replaced, not a crash
    assert T.signed(T.read_signatures(fs, f"{path}/{BACKUP_DIR}"), "tuner.pkl", b"x")


# ---- the lease during a real resume -------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_lease_keeps_beating_through_a_resume_with_many_state_saves(tmp_path, demo_cfg):
    """Ray's restore staged the experiment's top-level *.json (the lease among them) and uploaded that copy back at
    every state save: the heartbeat went back to the moment of the restore, again and again, while the resume
    trained. Sample the lease all through a resume that saves its state at every epoch."""
    from searchproc import kill_group, start, wait_rows, write_space

    epochs = 5
    space = write_space(tmp_path / "space.yaml", demo_cfg.with_overrides({"patience": 0, "epochs": epochs}).to_dict(),
                        {"train.lr": {"loguniform": [3e-4, 3e-3]}}, {"grace_period": epochs, "max_concurrent": 1})
    exp = tmp_path / "rr" / "beat"
    slow = {"MMSA_TEST_FAULT": "slow:seed=0:1"}
    proc = start(["search", "--data", demo_cfg.data.data_dir, "--space", str(space), "--num-samples", "1", "--name",
                  "beat", "--storage", str(tmp_path / "rr"), "--verbose", "0"], slow)
    assert wait_rows(proc, exp, 1), proc.stderr.read()[-2000:]
    kill_group(proc)
    proc.wait()
    time.sleep(2)
    proc = start(["resume", str(exp), "--verbose", "0"], {**slow, "MMSA_TEST_HEARTBEAT_S": "0.3"})
    beats, ages = [], []
    while proc.poll() is None:
        lease = L.read_lease(str(exp))
        if lease and lease.get("pid") == proc.pid:
            beats.append(lease["heartbeat"])
            ages.append(time.time() - lease["heartbeat"])
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    print(f"{len(beats)} samples over {beats[-1] - beats[0]:.0f} s, oldest heartbeat seen {max(ages):.1f} s")
    rows = [json.loads(x) for x in next(exp.glob("trial_*")).joinpath("result.json").read_text().splitlines()]
    assert len(rows) >= epochs and len(beats) > 50, (len(rows), len(beats))
    assert all(b2 >= b1 for b1, b2 in zip(beats, beats[1:])), "the heartbeat went back: someone else wrote the lease"
    # beats every 0.3 s; a loaded machine may hold the beating thread for a few seconds (the GIL in a long C call)
    assert max(ages) < 10.0, f"the lease went {max(ages):.1f} s without a heartbeat while its holder ran"


def test_a_folder_or_dangling_link_in_place_of_lease_or_key_is_one_error(tmp_path, key):
    (tmp_path / L.LOCK_FILE).mkdir()
    with pytest.raises(UserError, match="cannot write the lease"):
        L.ExperimentLock(str(tmp_path), "mmsa resume x").acquire()
    key.parent.mkdir(parents=True)
    key.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is a link to a file that does not exist"):
        T.check_key()
    assert not (tmp_path / "nowhere").exists()  # the key was not written through the link


def test_a_confirm_folder_that_is_a_link_is_not_read(confirmed, capsys, tmp_path):
    """EXP/confirm -> a real confirmation elsewhere: status/export/report must not present another folder's trials as
    this search's confirmation (before: exported as confirmed, its epochs counted in the budget)."""
    outside = tmp_path / "elsewhere"
    (confirmed / "confirm").rename(outside)
    (confirmed / "confirm").symlink_to(outside)
    doc, out = _export(confirmed, capsys)
    assert doc["search"].get("selection", "best trial") == "best trial" and "confirm.json is not used" in out
    assert main(["status", str(confirmed)]) == 0
    assert "+ confirm" not in capsys.readouterr().out


def test_lease_text_cannot_add_lines_to_an_error(tmp_path, capsys):
    """A lease's fields are the file's text: a newline in them must not forge a line of the refusal."""
    exp = fake_experiment(tmp_path)
    _lease(exp, host="h\nerror: FAKE", command="mmsa search\nline2", heartbeat=time.time())
    assert main(["refine", str(exp), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by" in err and "\\n" in err


def test_trial_files_of_the_wrong_shape_or_size_are_skipped(tmp_path, capsys):
    """A trial id that is a list, a params section that is a list, a result file far over any real size: status,
    report and export read them as damaged (before: TypeError/AttributeError tracebacks, gigabytes of memory)."""
    from search.experiment.trial_backup import MAX_TRIAL_FILE, parse_params, parse_rows

    exp = fake_experiment(tmp_path)
    t = _first_trial(exp)
    rows = [json.loads(l) for l in (t / "result.json").read_text().splitlines()]
    (t / "result.json").write_text("".join(json.dumps({**r, "trial_id": ["x"]}) + "\n" for r in rows))
    p = sorted(exp.glob("trial_*"))[1] / "params.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "train": []}))
    for cmd in (["status", str(exp)], ["report", str(exp)], ["export", str(exp), "-o", str(tmp_path / "b.yaml")]):
        assert main(cmd) == 0, capsys.readouterr().err
    capsys.readouterr()
    big = b"[]\n" * (MAX_TRIAL_FILE // 3 + 1)
    assert parse_rows(big) == [] and parse_params(b" " * MAX_TRIAL_FILE + b"{}") is None


@pytest.mark.parametrize("state", ["../trial_b/mmsa_state/epoch_000001", "/etc", "mmsa_state/epoch_000001/../../../x",
                                   "mmsa_state/epoch_1", 7, ["mmsa_state/epoch_000001"]])
def test_a_pointer_naming_a_state_outside_its_trial_is_refused(tmp_path, state):
    """A checkpoint's pointer names the state a resumed trial loads (on object storage: downloads): only a name mmsa
    writes is followed, never a path out of the trial's folder."""
    ck = tmp_path / "trial_a" / "checkpoint_000001"
    ck.mkdir(parents=True)
    (ck / POINTER_FILE).write_text(json.dumps({"state": "mmsa_state/epoch_000001", "reported_epoch": 2}))
    assert read_pointer(ck)["state"] == "mmsa_state/epoch_000001"  # what mmsa writes is read
    (ck / POINTER_FILE).write_text(json.dumps({"state": state, "reported_epoch": 2}))
    with pytest.raises(UserError, match=f"{POINTER_FILE} is damaged"):
        read_pointer(ck)
