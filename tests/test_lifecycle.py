"""An experiment loses nothing, whatever happens to it (issue: disk full, two writers, moves, signals, hostile
files), each on a real Ray instance with real searches in separate processes."""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.experiment import layout as experiment
from search.cli import main
from search.selection.results import load_trials
from search.commands.status import status_table
from search.experiment.state_backup import BACKUP_DIR
from conftest import tmpfs
from searchproc import kill_group, result_rows, start, wait_rows, write_space

pytestmark = pytest.mark.slow

SPACE = {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]}}


def _space(tmp_path, demo_cfg, epochs=4, **search):
    return write_space(tmp_path / "space.yaml", demo_cfg.with_overrides({"patience": 0, "epochs": epochs}).to_dict(),
                       SPACE, {"grace_period": epochs, "max_concurrent": 1, **search})


def _search(demo_cfg, space, storage, name, n):
    return ["search", "--data", demo_cfg.data.data_dir, "--space", str(space), "--num-samples", str(n), "--name", name,
            "--storage", str(storage), "--verbose", "0"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, timeout=600)


def _settle(exp, quiet_s=4.0, timeout=90.0):
    """Wait until nothing in exp has changed for quiet_s seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        newest = max((p.stat().st_mtime for p in exp.rglob("*") if p.exists()), default=0)
        if time.time() - newest > quiet_s:
            return
        time.sleep(0.5)


def _all_finished(exp, n):
    trials = load_trials(exp)
    return len(trials) == n and all(t.state == "TERMINATED" for t in trials)


def test_one_writer_export_copies_and_sigterm_saves(tmp_path, demo_cfg):
    exp = tmp_path / "rr" / "w1"
    slow = {"MMSA_TEST_FAULT": "slow:seed=0:1"}  # every trial; the search must still run during the checks below
    proc = start(_search(demo_cfg, _space(tmp_path, demo_cfg), tmp_path / "rr", "w1", 3), slow)
    assert wait_rows(proc, exp, 2), proc.stderr.read()[-2000:]

    r = _cli("resume", str(exp), "--verbose", "0")  # a second terminal, or a re-submitted job
    assert r.returncode == 2 and "is in use by `mmsa search --name w1` (pid" in r.stderr and "Traceback" not in r.stderr
    r = _cli(*_search(demo_cfg, tmp_path / "space.yaml", tmp_path / "rr", "w1", 3))
    assert r.returncode == 2 and "is in use by" in r.stderr
    r = _cli("status", str(exp))
    assert r.returncode == 0 and "running now: `mmsa search --name w1`" in r.stdout

    r = _cli("export", str(exp), "-o", str(tmp_path / "best.yaml"))
    assert r.returncode == 0 and "the search is still running" in r.stdout
    import yaml

    kept = Path(yaml.safe_load((tmp_path / "best.yaml").read_text())["search"]["checkpoint"])
    assert kept.parent == exp / "exported" and (kept / "model.safetensors").is_file()  # a copy no search deletes

    proc.send_signal(signal.SIGTERM)  # what Slurm, Kubernetes and `timeout` send, to the driver alone
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and f"mmsa resume {exp}" in err, err[-3000:]
    assert "Traceback" not in err and not (exp / ".mmsa-lock.json").exists()

    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    assert _all_finished(exp, 3)
    assert (kept / "model.safetensors").is_file() and (kept / "config.yaml").is_file()  # it outlived the pruning
    assert main(["predict", "--model", str(kept), "--out", str(tmp_path / "pred.txt"), "--quiet"]) == 0


def test_killed_search_resumes_copied_and_moved_and_refuses_foreign_state(tmp_path, demo_cfg):
    exp = tmp_path / "rr" / "mv"
    proc = start(_search(demo_cfg, _space(tmp_path, demo_cfg), tmp_path / "rr", "mv", 3))
    assert wait_rows(proc, exp, 3)
    kill_group(proc)  # SIGKILL: the lease stays behind, its process gone
    proc.wait()
    _settle(exp)  # a trial worker outside the process group can finish its last write
    rows = result_rows(exp)

    copy = tmp_path / "copy" / "mv"
    shutil.copytree(exp, copy, symlinks=True)
    stamp = time.time()
    time.sleep(1)
    assert main(["resume", str(copy), "--verbose", "0"]) == 0
    assert _all_finished(copy, 3)
    changed = [p for p in exp.rglob("*") if p.stat().st_mtime > stamp]
    assert changed == [], f"resuming the copy wrote into the original: {changed[:5]}"
    assert result_rows(exp) == rows

    moved = tmp_path / "elsewhere" / "mv"
    moved.parent.mkdir()
    exp.rename(moved)
    assert main(["resume", str(moved), "--verbose", "0"]) == 0, status_table(moved)
    assert _all_finished(moved, 3)
    assert not exp.exists()

    pwned = tmp_path / "PWNED"
    evil = b"cos\nsystem\n(S'touch " + str(pwned).encode() + b"'\ntR."
    (moved / "tuner.pkl").write_bytes(evil)  # someone with write access to the shared experiment
    r = _cli("resume", str(moved), "--verbose", "0")
    assert r.returncode == 0 and "restored tuner.pkl from .mmsa-state/" in r.stdout, r.stderr[-2000:]
    (moved / "tuner.pkl").write_bytes(evil)
    (moved / BACKUP_DIR / "tuner.pkl").write_bytes(evil)
    r = _cli("resume", str(moved), "--verbose", "0")
    assert r.returncode == 2 and "tuner.pkl were not written by a search of yours" in r.stderr
    assert "--trust-state" in r.stderr and "Traceback" not in r.stderr
    assert not pwned.exists()


def test_search_that_never_started_a_trial_can_be_started_again(tmp_path, demo_cfg):
    import yaml

    exp = tmp_path / "rr" / "again"
    space = _space(tmp_path, demo_cfg, epochs=1)
    experiment.write_meta(exp, {"name": "again", "num_samples": 1, "data_dir": str(tmp_path), "data_fingerprint": "0",
                                "created": "now", "spec": yaml.safe_load(space.read_text())})  # Ctrl-C at start-up
    (exp / "tuner.pkl").write_bytes(b"")
    r = _cli("resume", str(exp))
    assert r.returncode == 2 and "stopped before its first trial started" in r.stderr and "--name again" in r.stderr
    r = _cli(*_search(demo_cfg, space, tmp_path / "rr", "again", 1))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "never ran a trial; starting it again" in r.stdout and _all_finished(exp, 1)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "200m") as mnt:
        yield mnt


def test_full_disk_ends_with_one_message_and_loses_nothing(tmp_path, demo_cfg, small_disk):
    exp = small_disk / "full"
    r = _cli(*_search(demo_cfg, _space(tmp_path, demo_cfg, epochs=4, max_concurrent=2), small_disk, "full", 4))
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is full" in errors[0] and f"mmsa resume {exp}" in errors[0]
    assert "Traceback" not in r.stderr
    trials = load_trials(exp)
    assert trials and sum(len(t.results) for t in trials) >= 1
    for command in (["status", str(exp)], ["export", str(exp), "-o", str(tmp_path / "b.yaml")],
                    ["report", str(exp)]):
        r = _cli(*command)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (command, r.stderr[-2000:])
    before = {t.trial_id: len(t.results) for t in trials}
    subprocess.run(["mount", "-o", "remount,size=1200m", str(small_disk)], check=True)
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    after = {t.trial_id: len(t.results) for t in load_trials(exp)}
    assert all(after[tid] >= n for tid, n in before.items())  # nothing finished was lost
    assert _all_finished(exp, 4)
