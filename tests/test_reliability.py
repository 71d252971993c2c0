"""Faults a long search must survive, each on a real Ray instance: SIGKILL x3 + resume, a worker killed
mid-epoch, CUDA out of memory in one trial, Ctrl-C, unwritable or full storage."""
import json
import random
import signal
import subprocess

import pytest

from model import metrics as M
from search.tune.asha_state import replay, rungs
from search.cli import main
from search.trial.async_checkpoint import ENDED_FILE, STATE_DIR
from search.experiment.faults import PRUNE_ENV as FAULT_ENV, RETAIN_ENV
from search.trial.checkpoint_retention import METRICS_FILE
from search.experiment.ray_internals import ray_result_keys
from search.selection.results import _states, load_trials
from search.experiment.state_backup import BACKUP_DIR, is_state_file
from searchproc import kill_group, raw_results, result_rows, start, wait_rows, write_space

pytestmark = pytest.mark.slow

SPACE = {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]},
         "model.complexity": {"choice": ["high", "low"]}}


def _fixed(demo_cfg, **kw):
    return demo_cfg.with_overrides({"patience": 0, **kw}).to_dict()


def _search_args(tmp_path, space_file, name, n):
    return ["search", "--data", "unused", "--space", str(space_file), "--num-samples", str(n), "--name", name,
            "--storage", str(tmp_path / "rr"), "--verbose", "0"]


def test_sigkill_three_times_then_resume(tmp_path, demo_cfg, ray_local):
    n = 8
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=5), SPACE,
                        {"grace_period": 2, "reduction_factor": 2, "max_concurrent": 2})
    exp = tmp_path / "rr" / "k3"
    args = _search_args(tmp_path, space, "k3", n)
    args[2] = demo_cfg.data.data_dir
    rng = random.Random()
    snapshots = []  # per kill: (terminated trial names, their result.json text)
    proc = start(args)
    for kill in range(3):
        target = result_rows(exp) + rng.randint(1, 4) if exp.is_dir() else rng.randint(2, 5)
        alive = wait_rows(proc, exp, target)
        kill_group(proc)
        proc.wait()
        assert alive, f"the search finished before kill {kill + 1}; stderr: {proc.stderr.read()[-2000:]}"
        done = {f"trial_{tid}" for tid, s in _states(exp).items() if s["state"] == "TERMINATED"}
        snapshots.append({d: (exp / d / "result.json").read_text() for d in done})
        before = {d.name: raw_results(d) for d in exp.glob("trial_*")}
        if kill < 2:
            proc = start(["resume", str(exp), "--verbose", "0"])
    assert main(["resume", str(exp), "--verbose", "0"]) == 0

    trials = load_trials(exp)
    assert len(trials) == n and all(t.state == "TERMINATED" for t in trials)
    configs = {(t.config["train"]["lr"], t.config["train"]["batch_size"], t.config["model"]["complexity"]) for t in trials}
    assert len(configs) == n  # the searcher did not re-propose configurations it had run
    for snap in snapshots:
        for name, text in snap.items():
            assert (exp / name / "result.json").read_text() == text  # completed trials were not re-run
    for t in trials:
        raw = raw_results(t.path)
        epochs = [r[M.EPOCH] for r in raw]
        assert sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (t.path.name, epochs)
        assert epochs.count(1) == 1, (t.path.name, epochs)  # an interrupted trial never restarted from scratch
        assert len(epochs) - len(set(epochs)) <= 3, (t.path.name, epochs)  # at most the epoch in flight per kill
        for e in set(epochs):
            same = [r[M.VAL_LOSS] for r in raw if r[M.EPOCH] == e]
            assert max(same) - min(same) < 1e-4  # a repeated epoch reproduces the same numbers
        had = before.get(t.path.name, [])
        changed = [(i, sorted(k for k in {*a, *b} if a.get(k) != b.get(k))) for i, (a, b) in enumerate(zip(raw, had))
                   if a != b]
        assert len(raw) >= len(had) and not changed, (t.path.name, len(raw), len(had), changed[:3])  # nothing reported
        # before the last kill was lost or rewritten (names the keys that differ: seen once in CI, not reproduced)


ONE_LR = {"train.lr": {"loguniform": [1e-3, 2e-3]}, "train.batch_size": {"choice": [16]}}


def _search_until_killed(tmp_path, demo_cfg, name: str, n: int, epochs: int, search: dict, fault: dict):
    """A search started with a fault that SIGKILLs its driver; returns the experiment folder once it is dead."""
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=epochs), ONE_LR, search)
    args = _search_args(tmp_path, space, name, n)
    args[2] = demo_cfg.data.data_dir
    proc = start(args, fault)
    out, err = proc.communicate(timeout=400)
    kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    return tmp_path / "rr" / name


def test_driver_killed_right_after_pruning_resumes(tmp_path, demo_cfg, ray_local, capsys, recwarn):
    """The worst moment for a crash: old checkpoints deleted, the experiment state not yet saved. With Ray's own
    num_to_keep the previous newest checkpoint was gone here and resume failed the trial (seen in CI). Ray's state
    files cut short by the kill are put back from the backup folder."""
    exp = _search_until_killed(tmp_path, demo_cfg, "pk", 1, 4, {"grace_period": 4, "keep_checkpoints": 1},
                               {FAULT_ENV: "3"})
    (trial_dir,) = exp.glob("trial_*")
    assert len(list(trial_dir.glob("checkpoint_*"))) <= 3  # pruning ran before the kill
    # Ray copies its state files into storage in place: a kill mid-copy leaves them cut off. Do that to all of them.
    cut = sorted(p.name for p in exp.iterdir() if p.is_file() and is_state_file(p.name))
    assert {"tuner.pkl"} < set(cut) and all((exp / BACKUP_DIR / n).is_file() for n in cut)
    for n in cut:
        data = (exp / n).read_bytes()
        (exp / n).write_bytes(data[: len(data) // 3])
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    assert f"restored {', '.join(cut)} from {BACKUP_DIR}/" in capsys.readouterr().out
    (t,) = load_trials(exp)
    assert t.state == "TERMINATED" and t.failures == 0
    epochs = [r[M.EPOCH] for r in raw_results(t.path)]
    assert epochs[0] == 1 and epochs.count(1) == 1 and sorted(set(epochs)) == [1, 2, 3, 4], epochs
    kept = {json.loads((d / METRICS_FILE).read_text())[M.EPOCH] for d in trial_dir.glob("checkpoint_*")}
    assert 4 in kept and 3 in kept and len(kept) <= 3  # the pruner came back with the resumed search
    assert not [w for w in recwarn if "already reported" in str(w.message)]  # the repeated epoch is not re-told


def test_driver_killed_after_a_trial_finished_resumes_without_retraining(tmp_path, demo_cfg, ray_local):
    """The crash CI met: a trial ends, the driver deletes its training state at once (1.5 GiB at the lab's size) and
    is SIGKILLed before Ray saved the state that says the trial ended. Ray restores the trial as unfinished, from a
    checkpoint that names the deleted state; the trial sees the driver's verdict and ends without training."""
    exp = _search_until_killed(tmp_path, demo_cfg, "fin", 2, 3, {"grace_period": 3, "max_concurrent": 1},
                               {RETAIN_ENV: "1"})
    (first,) = [d for d in exp.glob("trial_*") if (d / ENDED_FILE).is_file()]
    assert not (first / STATE_DIR).exists()  # deleted by the sweep before the kill
    tid = first.name.removeprefix("trial_")
    assert _states(exp)[tid]["state"] != "TERMINATED"  # ...and Ray's saved state still has it running
    before = raw_results(first)
    (first / ENDED_FILE).write_bytes(bytes(random.Random(0).randrange(256) for _ in range(40)))  # damaged: still counts
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    trials = load_trials(exp)
    assert len(trials) == 2 and all(t.state == "TERMINATED" and t.failures == 0 for t in trials), \
        [(t.trial_id, t.state, t.failures, t.error) for t in trials]
    after = raw_results(first)
    assert after[: len(before)] == before and [r[M.EPOCH] for r in before] == [1, 2, 3]
    ours = lambda r: {k: v for k, v in r.items() if k not in ray_result_keys()}  # noqa: E731
    for row in after[len(before):]:  # rows Ray's saved state lacked, told again: the same row, not a new epoch
        assert ours(row) == ours(before[row[M.EPOCH] - 1])


def test_asha_rungs_rebuilt_give_the_same_decisions(tmp_path, demo_cfg, ray_local):
    """Replaying a finished search's results into a fresh ASHA reproduces every stop/continue decision, and
    `mmsa resume` installs those rungs into the restored scheduler."""
    from search.settings.space import parse_spec
    from search.tune.algorithms import make_scheduler
    from search.tune.tuner import run_search

    spec = parse_spec({"space": SPACE, "fixed": _fixed(demo_cfg, epochs=4),
                       "search": {"grace_period": 1, "reduction_factor": 2}}, "asha test")
    run_search(spec, 8, "asha", str(tmp_path), verbose=0, log=lambda *a: None)
    trials = load_trials(tmp_path / "asha")
    fresh = make_scheduler(spec)
    decisions = replay(fresh, trials)
    stopped_early = 0
    for t in trials:
        d = decisions[t.trial_id]
        assert [a for _, a in d[:-1]] == ["CONTINUE"] * (len(d) - 1), (t.trial_id, d)
        if not t.results[-1]["finished"]:  # ASHA stopped it: the rebuilt rungs stop it at the same epoch
            assert d[-1] == (len(t.results), "STOP"), (t.trial_id, d)
            stopped_early += 1
    assert stopped_early >= 2
    assert any(rec for _, rec in rungs(fresh))


def test_worker_killed_mid_epoch_is_retried(tmp_path, demo_cfg):
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=3), {"train.batch_size": {"choice": [16, 32]}},
                        {"grace_period": 3, "max_failures": 2, "seed": 1})
    args = _search_args(tmp_path, space, "kw", 4)
    args[2] = demo_cfg.data.data_dir
    proc = start(args, {"MMSA_TEST_FAULT": "kill:batch_size=32:2", "MMSA_TEST_FAULT_DIR": str(tmp_path)})
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    trials = load_trials(tmp_path / "rr" / "kw")
    killed = [t for t in trials if t.config["train"]["batch_size"] == 32]
    assert killed and len(list(tmp_path.glob("kill-*"))) == len(killed)
    assert all(t.state == "TERMINATED" for t in trials) and len(trials) == 4
    for t in killed:
        assert t.failures == 1
        epochs = [r[M.EPOCH] for r in raw_results(t.path)]
        assert epochs == [1, 2, 3]  # retried from the epoch-1 checkpoint, not from scratch


def test_cuda_oom_ends_one_trial_with_a_fix(tmp_path, demo_cfg, capsys):
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=2), {"train.batch_size": {"choice": [16, 64]}},
                        {"grace_period": 2, "max_failures": 0, "seed": 7})  # seed 7 samples both sizes
    args = _search_args(tmp_path, space, "oom", 4)
    args[2] = demo_cfg.data.data_dir
    proc = start(args, {"MMSA_TEST_FAULT": "oom:batch_size=64:1"})
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    exp = tmp_path / "rr" / "oom"
    trials = load_trials(exp)
    oom = [t for t in trials if t.config["train"]["batch_size"] == 64]
    ok = [t for t in trials if t.config["train"]["batch_size"] == 16]
    assert oom and ok and len(trials) == 4
    assert all(t.state == "ERROR" for t in oom) and all(t.state == "TERMINATED" and len(t.results) == 2 for t in ok)
    assert "ended with an error" in out
    assert main(["status", str(exp)]) == 0
    table = capsys.readouterr().out
    assert "CUDA out of memory at batch_size 64" in table and "set train.micro_batch_size to 32" in table
    assert main(["export", str(exp), "-o", str(tmp_path / "best.yaml")]) == 0
    best = (tmp_path / "best.yaml").read_text()
    assert "batch_size: 16" in best


def test_ctrl_c_leaves_a_resumable_search(tmp_path, demo_cfg, ray_local):
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=3), SPACE, {"grace_period": 3})
    args = _search_args(tmp_path, space, "int", 4)
    args[2] = demo_cfg.data.data_dir
    exp = tmp_path / "rr" / "int"
    proc = start(args)
    assert wait_rows(proc, exp, 2)
    kill_group(proc, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"mmsa resume {exp}" in err and "Traceback" not in err.split("search interrupted")[-1]
    assert main(["resume", str(exp), "--verbose", "0"]) == 0
    assert len(load_trials(exp)) == 4 and all(t.state == "TERMINATED" for t in load_trials(exp))


def test_storage_not_writable_refused_before_trials(tmp_path, demo_cfg, capsys):
    space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=1), SPACE, {})
    (tmp_path / "afile").write_text("x")
    args = _search_args(tmp_path, space, "nw", 2)
    args[2] = demo_cfg.data.data_dir
    args[args.index("--storage") + 1] = str(tmp_path / "afile" / "rr")
    assert main(args) == 2
    assert "not writable" in capsys.readouterr().err


def test_full_disk_refused_before_trials(tmp_path, demo_cfg, capsys):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        try:
            (mnt / "filler").write_bytes(b"\0" * 200_000)
        except OSError:
            pass  # the disk is now full
        space = write_space(tmp_path / "space.yaml", _fixed(demo_cfg, epochs=1), SPACE, {})
        args = _search_args(tmp_path, space, "full", 2)
        args[2] = demo_cfg.data.data_dir
        args[args.index("--storage") + 1] = str(mnt / "rr")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err or "MiB free" in err
        assert not (mnt / "rr" / "full").exists()
    finally:
        subprocess.run(["umount", str(mnt)])


def test_only_rays_sigterm_noise_is_taken_out_of_a_commands_stderr():
    """The filter the end-to-end tests apply before asserting that no traceback reaches the user: it removes the block
    seen in CI (a worker Ray SIGTERMed inside a finaliser) and nothing else, not a traceback of ours nor one that
    merely mentions SystemExit."""
    from searchproc import without_ray_sigterm_noise

    p = "\x1b[36m(train_trial pid=15283)\x1b[0m "
    noise = (f"{p}Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f10d67925c0>\n"
             f"{p}Traceback (most recent call last):\n"
             f"{p}  File \"/usr/lib/python3.11/_weakrefset.py\", line 39, in _remove\n{p}\n"
             f"{p}  File \"/venv/site-packages/ray/_private/worker.py\", line 1063, in sigterm_handler\n"
             f"{p}    raise_sys_exit_with_custom_error_message(\n{p}SystemExit: 1\n")
    before, after = "resuming search s\n", f"{p}Restored on 192.0.2.2 from checkpoint: ...\n"
    assert without_ray_sigterm_noise(before + noise + after) == before + after
    ours = ("Exception ignored in: <function f>\nTraceback (most recent call last):\n  File \"search/cli.py\", line 1\n"
            "SystemExit: 1\n")
    assert without_ray_sigterm_noise(ours) == ours  # no worker prefix: the driver's own
    other = noise.replace("sigterm_handler", "run_trial")
    assert without_ray_sigterm_noise(other) == other
    cut = noise.rsplit(p, 1)[0]  # the block cut before its SystemExit line
    assert without_ray_sigterm_noise(cut) == cut
