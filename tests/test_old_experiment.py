"""An experiment written by an older mmsa (tests/fixtures/old_experiment, made before search/ became packages, then
SIGKILLed mid-search) resumes to the end and exports with today's code. Ray pickled import paths of search/ into
its state (searcher, callbacks, trial folder function); moving a module without keeping its old path importable
fails here."""
from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.selection.results import load_trials
from tests.fixtures.make_old_experiment import DATA_ROOT, FIXTURE, KEY_FILE, ensure_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs():
    """The fixture's data and tiny models at the absolute path it recorded, made again byte for byte."""
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    with open(DATA_ROOT.parent / f"{DATA_ROOT.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs on one machine make them once
        return ensure_inputs()


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_old_experiment_resumes_to_the_end_and_exports(tmp_path, inputs, monkeypatch):
    import os

    exp = tmp_path / "ray_results" / "v1"
    shutil.copytree(FIXTURE, exp, symlinks=True)
    key = tmp_path / "state.key"
    shutil.copyfile(KEY_FILE, key)
    key.chmod(0o600)
    env = {**os.environ, "MMSA_STATE_KEY": str(key)}
    before = {t.trial_id: t.state for t in load_trials(exp)}
    assert len(before) == 2 and "TERMINATED" in before.values()  # one finished, one cut mid-training

    r = _cli("resume", str(exp), "--verbose", "0", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trust" not in r.stderr  # the signed state was accepted, not refused as foreign
    trials = load_trials(exp)
    assert len(trials) == 3 and all(t.state == "TERMINATED" for t in trials), [(t.trial_id, t.state) for t in trials]
    assert all(len(t.results) == 2 for t in trials)

    r = _cli("status", str(exp), env=env)
    assert r.returncode == 0 and all(t.trial_id in r.stdout for t in trials), r.stdout + r.stderr
    out = tmp_path / "best.yaml"
    r = _cli("export", str(exp), "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load(out.read_text())
    assert (Path(best["search"]["checkpoint"]) / "model.safetensors").is_file()
    assert best["model"]["modality"] == "text"
