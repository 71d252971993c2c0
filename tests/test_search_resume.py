"""SIGKILL the search process at a random point, then `mmsa resume`."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from model import metrics as M
from search.cli import main
from search.results import _states, load_trials

pytestmark = pytest.mark.slow
N = 6


def _rows(exp):
    return sum(len((d / "result.json").read_text().splitlines()) for d in exp.glob("trial_*") if (d / "result.json").is_file())


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_then_resume(tmp_path, demo_cfg, ray_local):
    space = {"space": {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]},
                       "model.complexity": {"choice": ["high", "low"]}},
             "fixed": demo_cfg.with_overrides({"epochs": 5, "patience": 0}).to_dict(),
             "search": {"grace_period": 2, "reduction_factor": 2, "max_concurrent": 2}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    exp = tmp_path / "rr" / "killme"
    kill_after = random.Random().randint(3, 12)  # result rows written before the kill
    print(f"killing after {kill_after} results")
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "search", "--data", demo_cfg.data.data_dir,
                             "--space", str(tmp_path / "space.yaml"), "--num-samples", str(N), "--name", "killme",
                             "--storage", str(tmp_path / "rr"), "--verbose", "0"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and (not exp.is_dir() or _rows(exp) < kill_after):
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be killed"
    finally:
        _kill_group(proc.pid)  # the driver and the Ray processes it started
        proc.wait()
    states = _states(exp)
    before = {d.name: (d / "result.json").read_text() for d in exp.glob("trial_*") if (d / "result.json").is_file()}
    done_before = {f"trial_{tid}" for tid, s in states.items() if s["state"] == "TERMINATED"}
    assert len(done_before) < N

    assert main(["resume", str(exp), "--verbose", "0"]) == 0

    trials = load_trials(exp)
    assert len(trials) == N and all(t.state == "TERMINATED" for t in trials)
    configs = {(t.config["train"]["lr"], t.config["train"]["batch_size"], t.config["model"]["complexity"]) for t in trials}
    assert len(configs) == N  # the searcher did not re-propose what it had already run
    for t in trials:
        name = t.path.name
        raw = [json.loads(l) for l in (t.path / "result.json").read_text().splitlines()]
        epochs = [r[M.EPOCH] for r in raw]
        assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (name, epochs)
        if name in done_before:
            assert (t.path / "result.json").read_text() == before[name]  # completed trials were not re-run
        elif name in before:
            had = [json.loads(l)[M.EPOCH] for l in before[name].splitlines()]
            assert raw[: len(had)] == [json.loads(l) for l in before[name].splitlines()]
            # continued after its last checkpoint: at most the epoch in flight is repeated, never epoch 1 again
            assert epochs.count(1) == 1 or max(had) <= 1, (name, epochs)
            assert len(epochs) - len(set(epochs)) <= 1, (name, epochs)
            for e in set(epochs):
                same = [r[M.VAL_LOSS] for r in raw if r[M.EPOCH] == e]
                assert max(same) - min(same) < 1e-4  # a repeated epoch reproduces the same numbers
