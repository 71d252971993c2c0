"""Every test seam of the project, in one place: fault injection for the reliability tests, off unless one of the
environment variables below is set (in the trial's or the driver's environment).

MMSA_TEST_FAULT=KIND:KEY=VALUE:EPOCH, e.g. `oom:batch_size=64:1` raises the real torch.cuda.OutOfMemoryError in the
middle of epoch 1 of every trial whose train.batch_size is 64; `kill:batch_size=32:2` SIGKILLs the worker process
in the middle of epoch 2 of such trials (once per trial: a marker file in MMSA_TEST_FAULT_DIR records that it fired,
so the retry from the checkpoint can succeed); `segv:...` does the same with a real SIGSEGV (a crash in native
code: the process dies as it would, with the interpreter's and Ray's fault handlers printing their dumps). `slow:batch_size=16:1` sleeps 0.2 s after each training batch from
epoch 1 on (warm workers make the tests' small searches finish before a test can look at them running).

MMSA_TEST_FAULT_PRUNE=EPOCH SIGKILLs the search driver right after it pruned checkpoints once a trial reached EPOCH,
before Ray saved the experiment state: the worst moment for a crash.

MMSA_TEST_FAULT_RETAIN=N SIGKILLs the search driver right after the N-th finished trial's training state was deleted
(search/tune/callbacks.py TrialRetention), before Ray saved the experiment state that says the trial finished.

MMSA_TEST_FAULT_WRITE=EPOCH SIGKILLs a trial's worker in the middle of writing the training state of EPOCH in the
background (search/trial/async_checkpoint.py: weights written, the rest not; on object storage: in the middle of its
upload, one file up), once per trial (marker in MMSA_TEST_FAULT_DIR).

MMSA_TEST_FAULT_WRITE_HANG=EPOCH stops the first trial that writes the training state of EPOCH in the background at the
same point (weights written, the rest not), for good: the file `hangwrite` in MMSA_TEST_FAULT_DIR names its trial
folder, so a test can take that trial's node away while the write is in flight (tests/test_node_loss.py).

MMSA_TEST_HEARTBEAT_S=SECONDS renews the experiment lease (search/experiment/lock.py) this often instead of every HEARTBEAT_S, so a
test sees many beats during a short resume.

(Tests count picture decodes by wrapping data_pipeline.images._open_rgb, with no hook in production code.)
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "MMSA_TEST_FAULT"
ENV_DIR = "MMSA_TEST_FAULT_DIR"
PRUNE_ENV = "MMSA_TEST_FAULT_PRUNE"
WRITE_ENV = "MMSA_TEST_FAULT_WRITE"
WRITE_HANG_ENV = "MMSA_TEST_FAULT_WRITE_HANG"
HANG_MARKER = "hangwrite"
RETAIN_ENV = "MMSA_TEST_FAULT_RETAIN"
HEARTBEAT_ENV = "MMSA_TEST_HEARTBEAT_S"


def heartbeat_s(default: float) -> float:
    return float(os.environ.get(HEARTBEAT_ENV) or default)


def batch_hook(cfg, trial_id: str, epoch_of):
    """A Trainer.on_batch callback that injects the configured fault, or None when no fault is configured."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    kind, cond, at_epoch = spec.split(":")
    key, value = cond.split("=")
    if str(getattr(cfg.train, key)) != value:
        return None
    marker = Path(os.environ.get(ENV_DIR, "/tmp")) / f"{kind}-{trial_id}"
    seen = {"batches": 0}

    def hook(train: bool, n: int) -> None:
        if kind == "slow" and train and epoch_of() + 1 >= int(at_epoch):
            import time

            time.sleep(0.2)  # a search that runs long enough to be looked at while it runs
            return
        if not train or epoch_of() + 1 != int(at_epoch):
            return
        seen["batches"] += 1
        if seen["batches"] < 2:  # mid-epoch: after the first batch
            return
        if kind == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by MMSA_TEST_FAULT)")
        if kind in ("kill", "segv") and not marker.exists():
            marker.write_text("fired")
            os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGSEGV)

    return hook


def after_pruning(newest_epoch: int) -> None:
    """Called by the checkpoint pruner after it deleted what it deletes."""
    fault = os.environ.get(PRUNE_ENV)
    if fault and newest_epoch == int(fault):
        os.kill(os.getpid(), signal.SIGKILL)


def after_retention(finished: int) -> None:
    """Called by the retention callback after it swept the state of the `finished`-th trial to end."""
    fault = os.environ.get(RETAIN_ENV)
    if fault and finished == int(fault):
        os.kill(os.getpid(), signal.SIGKILL)


def during_state_write(trial: str, epoch: int) -> None:
    """Called by the background writer between the weights and the rest of a training state."""
    fault = os.environ.get(WRITE_ENV)
    if fault and epoch == int(fault):
        marker = Path(os.environ.get(ENV_DIR, "/tmp")) / f"killwrite-{trial}"
        if not marker.exists():
            marker.write_text("fired")
            os.kill(os.getpid(), signal.SIGKILL)
    hang = os.environ.get(WRITE_HANG_ENV)
    if hang and epoch == int(hang):
        try:  # one trial of the search: the others are the undisturbed reference
            fd = os.open(Path(os.environ.get(ENV_DIR, "/tmp")) / HANG_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.write(fd, trial.encode())
        os.close(fd)
        import time

        time.sleep(3600)  # until the node goes, with the process
