"""search/trial/async_checkpoint.py without Ray: a pointer names only whole states, what it names loads exactly that
epoch, and finished trials keep only the best weights of the best trials."""
import json
import math

import torch

from model import metrics as M
from model.train import Trainer
from search.trial.async_checkpoint import (BEST_PREFIX, STATE_DIR, AsyncCheckpointer, ended_verdict, mark_ended,
                                     read_pointer, retain_finished, state_name)
from search.trial.checkpoint_retention import PIN_FILE


class _Cfg:
    pass


class FakeTrainer:
    def __init__(self):
        self.model = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer)
        self.scaler = None
        self.epoch = 0
        self.history = []
        self.steps = 0  # optimizer steps (the warm-up clock)
        self.cfg = None
        self.objective = M.objective(None)  # train.select_metric's default, as Trainer sets it
        self.before_step = None

    training_state = Trainer.training_state  # the real one: what a checkpoint holds

    def step(self):
        if self.before_step:
            self.before_step()
        self.model(torch.ones(1, 3)).sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


def one_epoch(trial_dir, monkeypatch):
    """A trainer that has trained one epoch (loss 1.0) and its checkpointer, config writing stubbed."""
    import search.trial.async_checkpoint as ac

    monkeypatch.setattr(ac, "save_config", lambda cfg, path: path.write_text("{}"))
    t = FakeTrainer()
    ck = AsyncCheckpointer(t, trial_dir, every=1)
    t.step()
    t.epoch = 1
    t.history.append({"epoch": 1, "val_loss": 1.0})
    return t, ck


def test_pointer_names_whole_state_of_the_snapshot_epoch(tmp_path, monkeypatch):
    t, ck = one_epoch(tmp_path, monkeypatch)
    ck.after_epoch({"epoch": 1, "val_loss": 1.0, "best_val_loss": 1.0})
    want = {k: v.clone() for k, v in t.model.state_dict().items()}
    # epoch 1's state is written only once epoch 2 starts: the first report names the fresh start
    assert read_pointer(ck.pointer(1, tmp_path / "p1")) == {"state": None, "reported_epoch": 1}
    t.step()  # the snapshot happens before this step changes the weights
    t.epoch = 2
    t.history.append({"epoch": 2, "val_loss": 1.0})  # as good, not better: epoch 1 stays the best
    ck.after_epoch({"epoch": 2, "val_loss": 1.0, "best_val_loss": 1.0})
    p = ck.pointer(2, tmp_path / "p2")
    assert read_pointer(p) == {"state": state_name(1), "reported_epoch": 2}
    state_dir = tmp_path / state_name(1)
    from safetensors.torch import load_file

    got = load_file(str(state_dir / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    st = torch.load(state_dir / "trainer_state.pt", weights_only=True)
    assert st["epoch"] == 1
    assert sorted(x.name for x in tmp_path.glob(f"{BEST_PREFIX}*")) == [f"{BEST_PREFIX}000001"]
    ck.close()


def test_a_write_cut_short_is_never_named(tmp_path, monkeypatch):
    """A kill during the write leaves only a hidden temporary folder; no pointer names it."""
    import search.trial.async_checkpoint as ac

    monkeypatch.setattr(ac, "save_config", lambda cfg, path: path.write_text("{}"))
    t = FakeTrainer()
    ck = AsyncCheckpointer(t, tmp_path, every=1)

    def killed(*a, **k):
        raise SystemExit("killed while writing")

    monkeypatch.setattr(ac.torch, "save", killed)
    t.epoch = 1
    ck.after_epoch({"epoch": 1, "val_loss": 1.0, "best_val_loss": 1.0})
    t.step()
    try:
        ck.pointer(2, tmp_path / "p")
        raise AssertionError("a failed write must fail the trial (Ray retries from the previous pointer)")
    except SystemExit:
        pass
    assert not (tmp_path / state_name(1)).exists()
    assert [p.name for p in (tmp_path / STATE_DIR).iterdir()] == [] if (tmp_path / STATE_DIR).exists() else True
    ck.close()


def test_retain_finished_keeps_best_weights_of_the_best_trials(tmp_path):
    trials = []
    for i, loss in enumerate([0.5, 0.2, math.nan, 0.9]):
        d = tmp_path / f"trial_{i}"
        (d / STATE_DIR / "epoch_000001").mkdir(parents=True)
        (d / f"{BEST_PREFIX}000001").mkdir()
        trials.append((str(d), loss))
    (tmp_path / "trial_3" / f"{BEST_PREFIX}000001" / PIN_FILE).write_text(json.dumps({}))
    retain_finished(trials, 2)
    assert not any((tmp_path / f"trial_{i}" / STATE_DIR).exists() for i in range(4))
    kept = sorted(p.parent.name for p in tmp_path.glob(f"*/{BEST_PREFIX}*"))
    assert kept == ["trial_0", "trial_1", "trial_3"]  # the two best, and the pinned one


def test_checkpoint_every_writes_the_state_every_n_epochs(tmp_path, monkeypatch):
    import search.trial.async_checkpoint as ac

    monkeypatch.setattr(ac, "save_config", lambda cfg, path: path.write_text("{}"))
    t = FakeTrainer()
    ck = AsyncCheckpointer(t, tmp_path, every=2)
    names = []
    for e, loss in enumerate([1.0, 2.0, 3.0, 0.5], start=1):
        t.step()
        t.epoch = e
        t.history.append({"epoch": e, "val_loss": loss})
        ck.after_epoch({"epoch": e, "val_loss": loss, "best_val_loss": min(h["val_loss"] for h in t.history)})
        names.append(read_pointer(ck.pointer(e, tmp_path / f"p{e}"))["state"])
        ck.after_report()
    ck.close()
    assert names == [None, None, state_name(2), state_name(2)]  # epoch 2's state, from the report of epoch 3 on
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["epoch_000002", "epoch_000004"]
    assert [p.name for p in tmp_path.glob(f"{BEST_PREFIX}*")] == [f"{BEST_PREFIX}000004"]  # best: every improvement


def test_a_write_that_ends_after_the_drivers_verdict_applies_it(tmp_path, monkeypatch):
    """A warm worker finishes an ASHA-stopped trial's background writes only when it is reused, after the driver
    deleted the trial's state: the late write sees the verdict (mark_ended) and leaves nothing the verdict drops."""
    for keep_best in (False, True):
        trial = tmp_path / f"keep{keep_best}"
        trial.mkdir()
        t, ck = one_epoch(trial, monkeypatch)
        retain_finished([(str(trial), 1.0)], 1 if keep_best else 0)  # the driver judged the trial first
        ck.after_epoch({"epoch": 1, "val_loss": 1.0, "best_val_loss": 1.0})  # a best epoch, and a state epoch
        ck.close()
        assert not (trial / STATE_DIR).exists() or not any((trial / STATE_DIR).iterdir())
        assert bool(list(trial.glob(f"{BEST_PREFIX}*"))) == keep_best


def test_the_final_epoch_writes_no_state_and_a_verdict_can_change(tmp_path, monkeypatch):
    t, ck = one_epoch(tmp_path, monkeypatch)
    ck.after_epoch({"epoch": 1, "val_loss": 1.0, "best_val_loss": 1.0}, final=True)
    ck.close()
    assert not (tmp_path / STATE_DIR).exists() and len(list(tmp_path.glob(f"{BEST_PREFIX}*"))) == 1
    mark_ended(tmp_path, True)
    retain_finished([(str(tmp_path), 1.0)], 0)  # better trials finished since: this one drops out of the top
    assert not list(tmp_path.glob(f"{BEST_PREFIX}*"))
    assert json.loads((tmp_path / "mmsa_ended.json").read_text()) == {"keep_best": False}


def test_retention_removes_what_a_worker_that_exited_mid_write_left(tmp_path):
    trial = tmp_path / "trial_x"
    (trial / f".{BEST_PREFIX}000002.tmpab12").mkdir(parents=True)  # cut short when the worker exited
    (trial / f".{BEST_PREFIX}000002.tmpab12" / "model.safetensors").write_bytes(b"x" * 100)
    (trial / f"{BEST_PREFIX}000001").mkdir()
    retain_finished([(str(trial), 0.5)], 1)  # while workers may still write: a .tmp folder may be a live write
    assert len([p for p in trial.iterdir() if p.is_dir()]) == 2
    retain_finished([(str(trial), 0.5)], 1, half_written=True)  # after Tuner.fit returned: no writer is left
    assert [p.name for p in trial.iterdir() if p.is_dir()] == [f"{BEST_PREFIX}000001"]


def test_trials_stopped_by_an_interrupt_keep_their_state(tmp_path):
    """Ctrl-C / SIGTERM: Ray's clean-up marks the running trials TERMINATED, then calls on_experiment_end; their state
    must survive (resume continues them from it). Only trials that finished (on_trial_complete) are swept."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from search.tune.callbacks import TrialRetention

    def trial(name):
        d = tmp_path / name
        (d / STATE_DIR / "epoch_000002").mkdir(parents=True)
        return SimpleNamespace(status="TERMINATED", last_result={"best_val_loss": 0.5},
                               storage=SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(d)))

    done, interrupted = trial("trial_done"), trial("trial_running")
    cb = TrialRetention(keep_best_trials=1)
    cb.on_trial_complete(0, [done], done)
    cb.on_experiment_end([done, interrupted])
    cb.flush()
    assert not (tmp_path / "trial_done" / STATE_DIR).exists()
    assert (tmp_path / "trial_running" / STATE_DIR / "epoch_000002").is_dir()


def test_a_background_state_holds_every_key_of_the_trainers_training_state(demo_cfg, tmp_path):
    """The background writer saves what Trainer.training_state() returns: a key added there (here by a subclass)
    is in a background state exactly as in a sync checkpoint, with the same values."""
    import numpy as np

    from model.run import load_train_val
    from model.run_files import STATE
    from model.train import Split

    class GrownTrainer(Trainer):
        def training_state(self):
            return {**super().training_state(), "added_later": {"n": self.epoch}}

    full = load_train_val(demo_cfg, progress=False)
    data = Split(full.train.subset(np.arange(32)), full.val.subset(np.arange(16)))
    t = GrownTrainer(demo_cfg.with_overrides({"epochs": 2, "patience": 0}), data)
    ck = AsyncCheckpointer(t, tmp_path / "trial", every=1)
    row = next(t.fit())
    sync = torch.load(t.save_checkpoint(tmp_path / "sync") / STATE, weights_only=True)
    ck.after_epoch(row)
    ck.finish_best()
    ck.close()
    background = torch.load(tmp_path / "trial" / state_name(1) / STATE, weights_only=True)
    assert "added_later" in sync and set(background) == set(sync)
    for key in set(sync) - {"optimizer", "torch_rng"}:
        assert background[key] == sync[key], key
    assert set(background["optimizer"]["state"]) == set(sync["optimizer"]["state"])
    t.close()


def test_a_retention_callback_pickled_before_search_metric_follows_it_on_resume():
    """tuner.pkl of a val_acc search from before search.metric reached TrialRetention: the restored callback has no
    metric (it would rank finished trials by val loss); resume sets the search's."""
    import pickle

    from model import metrics as M
    from search.tune.callbacks import TrialRetention, follow_search_metric

    old = TrialRetention(keep_best_trials=1)
    del old.metric  # as unpickled from an older tuner.pkl
    restored = pickle.loads(pickle.dumps(old))
    assert restored._objective().metric == M.VAL_LOSS
    follow_search_metric([object(), restored], M.VAL_ACC)
    assert restored._objective().metric == M.VAL_ACC and restored._objective().mode == "max"


def test_staging_sweep_deletes_dead_processes_folders_and_ignores_planted_names(tmp_path, monkeypatch):
    """Trials on object storage stage in TMP/mmsa-trial-HOST-PID-*: a folder of a process of this host that is gone is
    deleted at the next trial's start; another host's (a TMPDIR shared by machines, where the pid means nothing here)
    is not; a planted name (a pid too large for the OS, not a number) never stops a trial."""
    import os
    import subprocess
    import sys
    import tempfile

    from search.trial.checkpoint_strategy import STAGING_PREFIX, staging_folder, staging_prefix

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = staging_prefix()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{mine}{int(dead.stdout)}-abc"
    other_host = tmp_path / f"{STAGING_PREFIX}another.node-{int(dead.stdout)}-abc"
    planted = [tmp_path / f"{mine}99999999999999999999-x", tmp_path / f"{mine}x-y"]
    live = tmp_path / f"{mine}{os.getpid()}-live"
    for d in (gone, other_host, live, *planted):
        (d / "mmsa_state").mkdir(parents=True)
    new = staging_folder()
    assert new.is_dir() and new.parent == tmp_path and new.name.startswith(f"{mine}{os.getpid()}-")
    assert not gone.exists() and live.exists() and other_host.exists() and all(p.exists() for p in planted)


def test_a_trial_end_touches_only_the_folders_whose_verdict_changed(tmp_path):
    """The driver's retention after each trial end (callbacks.TrialRetention) remembers what it applied: a folder
    whose verdict is unchanged is not listed or read again (on object storage that was several requests per finished
    trial per trial end); the end-of-search sweep (half_written) still goes through every folder."""
    def trial(i):
        d = tmp_path / f"trial_{i}"
        (d / STATE_DIR / "epoch_000001").mkdir(parents=True)
        (d / f"{BEST_PREFIX}000001").mkdir()
        return str(d)

    applied = {}
    done = [(trial(0), 0.5)]
    retain_finished(done, 1, applied=applied)
    assert applied == {"trial_0": True} and not (tmp_path / "trial_0" / STATE_DIR).exists()
    (tmp_path / "trial_0" / STATE_DIR).mkdir()  # a marker: touched again, it would go
    done.append((trial(1), 0.9))  # worse: trial_0 stays the best, its verdict is unchanged
    retain_finished(done, 1, applied=applied)
    assert (tmp_path / "trial_0" / STATE_DIR).is_dir() and applied == {"trial_0": True, "trial_1": False}
    assert not (tmp_path / "trial_1" / f"{BEST_PREFIX}000001").exists()
    done.append((trial(2), 0.1))  # better: trial_0 leaves the top and is touched
    retain_finished(done, 1, applied=applied)
    assert applied == {"trial_0": False, "trial_1": False, "trial_2": True}
    assert not (tmp_path / "trial_0" / STATE_DIR).exists() and not (tmp_path / "trial_0" / f"{BEST_PREFIX}000001").exists()
    assert ended_verdict(tmp_path / "trial_0") is False
    (tmp_path / "trial_1" / STATE_DIR).mkdir()
    retain_finished(done, 1, half_written=True, applied=applied)  # the final sweep: every folder
    assert not (tmp_path / "trial_1" / STATE_DIR).exists()

