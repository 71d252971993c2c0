"""Trial checkpoints written while the next epoch trains (search.checkpoint_mode: async, the default).

At the lab's real size a checkpoint (weights + AdamW moments) is 1.5 GiB; written and then copied by Ray inside
`tune.report` it blocked the GPU for seconds every epoch. Here:

- The trial's full training state of epoch k goes to its own folder on storage, TRIAL/mmsa_state/epoch_0000kk/,
  written by a background thread. The parameters and optimizer moments are cloned by the writer thread while the first
  forward/backward pass of epoch k+1 runs, and that epoch's first optimizer step waits for the clone
  (Trainer.before_step), so nothing changed them since epoch k ended (buffers such as BatchNorm statistics, which a
  forward pass updates, are copied when the epoch ends). A folder is complete or absent (written beside, then renamed).
- Ray's checkpoint, reported with every result, is a few bytes: POINTER_FILE names the newest *complete* state
  folder (none before the first: the fresh start) and the epoch whose result it was reported with (normally state
  k with the result of epoch k+1). Ray's saved experiment state therefore never names a state that is not whole,
  whenever the trial is killed. Resuming loads exactly that state (epoch k) and trains epoch k+1 again without
  reporting it (Ray has its result already; each epoch's randomness is a function of (seed, epoch), so the replay
  is the same epoch), then goes on reporting from k+2.
- The best epoch's weights (no optimizer state) go to TRIAL/mmsa_best_epoch_0000kk/ with config.yaml, a folder that
  `mmsa predict --model` reads; an older best folder is deleted once a better one is complete, unless `mmsa export`
  pinned it. No host copy of the best weights is kept in memory.
- When a trial ends, the driver (search/tune/callbacks.py TrialRetention) deletes its mmsa_state/ and keeps best folders
  only for the `search.keep_best_trials` best finished trials.

`search.checkpoint_every` N writes the state every N epochs (a retried or resumed trial then repeats up to N
epochs); best weights are written whenever an epoch improves.
"""
from __future__ import annotations

import concurrent.futures
import copy
import errno
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch

from data_pipeline.errors import UserError
from model import run_files as ckpt
from model.config import save_config

from search.experiment import faults, ray_internals
from search.trial import pins
from search.trial.checkpoint_retention import write_checkpoint_metrics
from search.settings.schema import M
from search.experiment.storage import parse_json
from search.trial.object_store import ObjectStoreFolder

log = logging.getLogger(__name__)

STATE_DIR = "mmsa_state"
BEST_PREFIX = "mmsa_best_epoch_"
POINTER_FILE = "mmsa_state.json"
ENDED_FILE = "mmsa_ended.json"  # the driver's verdict on a finished trial (mark_ended)
# The key of Trainer.training_state() whose tensors (AdamW's moments) change only in an optimizer step: cloned by the
# writer thread while the next epoch's first forward/backward runs. Every other key is copied when the epoch ends.
CLONED_AT_STEP = "optimizer"

# Extra keys of each reported row (bench/search_overhead.py reads them): measured in the trial process.
OVERHEAD_S = "overhead_prev_s"  # seconds the trainable blocked training after the previous epoch's passes
BYTES_PREV = "bytes_written_prev"  # bytes the previous epoch's checkpointing wrote to storage
PASS_S = "pass_s"  # seconds of this epoch's training + validation passes
FIRST_BATCH_S = "first_batch_s"  # trial start to the moment its first batch starts (search/trial/worker.py: from the
# process's start for a process's first trial, from the trainable's call on a warm worker)


def state_name(epoch: int) -> str:
    return f"{STATE_DIR}/epoch_{epoch:06d}"


STATE_NAME_RE = rf"{STATE_DIR}/epoch_([0-9]{{6}})"  # state_name's only form: a pointer naming anything else is damaged


def state_epoch(name: str) -> int:
    """The epoch of a state_name (ValueError for any other text)."""
    m = re.fullmatch(STATE_NAME_RE, name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(name)
    return int(m.group(1))


def best_name(epoch: int) -> str:
    return f"{BEST_PREFIX}{epoch:06d}"


def read_pointer(ck_dir: Path) -> dict | None:
    from data_pipeline.safe_files import read_bytes

    data = read_bytes(Path(ck_dir) / POINTER_FILE)  # never through a link planted in the checkpoint
    if data is None:
        return None  # a checkpoint of checkpoint_mode sync (or of an older search): the whole state is in it
    d = parse_json(data)
    try:
        state = d["state"]
        # only a name mmsa writes (state_name): a planted `../other-trial/...` or absolute path must not make a
        # resumed trial load (or, on object storage, download) a state from outside its own folder
        if state is not None:
            state_epoch(state)  # ValueError unless it is a name state_name writes
        return {"state": state, "reported_epoch": int(d["reported_epoch"])}
    except (KeyError, TypeError, ValueError, OverflowError):
        raise UserError(f"{Path(ck_dir) / POINTER_FILE} is damaged (not what mmsa writes): the trial cannot tell "
                        "which training state this checkpoint is; it is not resumed from it") from None


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# A trial folder is a local path or an ObjectStoreFolder (s3://, gs://): each rule below is written once for both.
TrialFolder = "Path | str | ObjectStoreFolder"


def delete_unpinned(path: Path | str, remote: ObjectStoreFolder | None = None, root: Path | None = None) -> None:
    """path: a folder below a local trial folder `root` (default: path's folder), or (remote given) its name below the
    remote trial folder. Unless an earlier version's `mmsa export` pinned it (search/trial/pins.py); a storage error
    leaves it for later."""
    try:
        if remote is not None:
            pins.delete_unpinned(remote.fs, remote.at(str(path)))
        else:
            pins.delete_unpinned(pafs.LocalFileSystem(), str(path), str(root or Path(path).parent))
    except OSError as e:  # throttled, a blip: retention at the trial's end (or the next best epoch) tries again
        log.warning("could not delete %s: %s", path, e)


def apply_retention(trial_dir: TrialFolder, keep_best: bool, half_written: bool = False) -> bool:
    """What a finished trial keeps: no training state; its best weights only if `keep_best` (or pinned).
    half_written: also remove half-written best folders, which a worker that exited while writing leaves; only when
    no worker can still be writing one (Tuner.fit has returned). Returns whether the training state is seen gone
    (deletions on storage fail quietly: throttled, a blip; the caller tries again later)."""
    if isinstance(trial_dir, ObjectStoreFolder):  # a folder is whole once its METRICS_FILE is up (the last file)
        trial_dir.delete(STATE_DIR)
        for name in trial_dir.names(BEST_PREFIX):
            if not keep_best or (half_written and not trial_dir.whole(name)):
                delete_unpinned(name, trial_dir)
        return not trial_dir.exists(STATE_DIR, on_error=True)
    shutil.rmtree(Path(trial_dir) / STATE_DIR, ignore_errors=True)
    if half_written:
        for tmp in [*Path(trial_dir).glob(f".{BEST_PREFIX}*.tmp*"), *Path(trial_dir).glob(f".{BEST_PREFIX}*.old")]:
            shutil.rmtree(tmp, ignore_errors=True)
    if not keep_best:
        for best in Path(trial_dir).glob(f"{BEST_PREFIX}*"):
            delete_unpinned(best)
    return not (Path(trial_dir) / STATE_DIR).exists()


def mark_ended(trial_dir: TrialFolder, keep_best: bool) -> None:
    """The driver's verdict on a finished trial, written BEFORE it deletes: a background write of that trial that
    completes after the deletion (a warm worker finishes the stopped trial's writes when it is reused) sees the
    verdict and applies it itself, so nothing is left behind whichever side comes last."""
    from data_pipeline.atomic import write_file

    data = json.dumps({"keep_best": keep_best}).encode()
    if isinstance(trial_dir, ObjectStoreFolder):
        trial_dir.write(ENDED_FILE, data)
    else:
        write_file(Path(trial_dir) / ENDED_FILE, data)


def ended_verdict(trial_dir: TrialFolder) -> bool | None:
    """keep_best of the driver's verdict, or None while the trial has not been judged finished."""
    try:
        if isinstance(trial_dir, ObjectStoreFolder):
            return bool(parse_json(trial_dir.read(ENDED_FILE))["keep_best"])
        from data_pipeline.safe_files import open_read

        return bool(parse_json(open_read(Path(trial_dir) / ENDED_FILE))["keep_best"])
    except (OSError, KeyError, TypeError):
        return None


class AsyncCheckpointer:
    """Owns the trial folder's mmsa_state/ and mmsa_best_epoch_*/. remote: the trial folder is on object storage;
    trial_dir is then a local staging folder each folder is written into whole before its upload."""

    def __init__(self, trainer, trial_dir: str | Path, every: int = 1, remote: ObjectStoreFolder | None = None):
        self.trainer = trainer
        self.trial_dir = Path(trial_dir)
        self.remote = remote
        self.every = every
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mmsa-ckpt")  # joined at exit
        self.pending: list[tuple[int, concurrent.futures.Future]] = []  # state writes not yet reported
        self.complete: int | None = None  # newest complete state epoch not yet reported
        self.reported: list[int] = []  # state epochs named by reported pointers, oldest first
        self._cloned: threading.Event | None = None  # set once the snapshot of the last epoch is taken
        self.best_pending: list[tuple[int, concurrent.futures.Future]] = []
        self.gate_s = 0.0
        self.bytes_written = 0
        self.value: dict[int, float] = {}  # epoch -> its objective value (train.select_metric)
        trainer.before_step = self._before_step
        trainer.keep_best_state = False
        # A trial that ASHA stops ends its process right after a report: the best weights being written then are
        # finished first.
        ray_internals.run_at_worker_exit(self.pool.shutdown, wait=True)

    # ---- the training thread --------------------------------------------------------------------------------
    def after_epoch(self, row: dict, final: bool = False) -> None:
        """Right after epoch `row[epoch]` ended: start writing what this epoch must leave on storage. `final`: the
        trial ends with this epoch (all epochs, or early stop), so no state to continue from is written."""
        e = int(row[M.EPOCH])
        obj = self.trainer.objective
        self.value[e] = value = float(row[obj.metric])
        # the trainer's own rule (model/metrics.best_index): the first epoch of the best finite value
        best = obj.is_best([h for h in self.trainer.history if h[M.EPOCH] < e] + [row])
        state_epoch = e % self.every == 0 and not final
        if not (best or state_epoch):
            return
        t = self.trainer
        live = t.model.state_dict()
        # Buffers (BatchNorm statistics) change in the next forward pass: copied now (kilobytes). Parameters and
        # optimizer moments change only in the next optimizer step: cloned by the writer thread while the next
        # epoch's first forward/backward runs, and that step waits for the clone (Trainer.before_step).
        buffer_names = {n for n, _ in t.model.named_buffers()}
        buffers = {k: _clone(v) for k, v in live.items() if k in buffer_names}
        small = opt_state = None
        if state_epoch:  # what a sync checkpoint holds (Trainer.training_state), so a key added there is here too
            small = t.training_state()
            opt_state = small.pop(CLONED_AT_STEP)  # references to the live moments
            small = copy.deepcopy(small)  # the rest (scheduler, history, ...) may change before the next step
        cloned = threading.Event()
        self._cloned = cloned

        def job():
            try:
                try:
                    weights = {k: buffers[k] if k in buffers else _clone(v) for k, v in live.items()}
                    state = {**small, CLONED_AT_STEP: _clone(opt_state)} if state_epoch else None
                finally:
                    cloned.set()
                linkable = best and self._write_best(e, weights, value)
                if state_epoch:
                    self._write_state(e, weights, state, linkable)
            finally:  # written after the driver judged the trial finished: apply its verdict (mark_ended)
                folder = self.remote or self.trial_dir
                keep_best = ended_verdict(folder)
                if keep_best is not None:
                    apply_retention(folder, keep_best)

        fut = self.pool.submit(job)
        if state_epoch:
            self.pending.append((e, fut))
        else:
            self.best_pending.append((e, fut))

    def _before_step(self) -> None:
        if self._cloned is not None:
            start = time.perf_counter()
            self._cloned.wait()
            self._cloned = None
            self.gate_s += time.perf_counter() - start

    def pointer(self, reported_epoch: int, tmp: Path) -> Path:
        """Wait for the state writes started so far (normally done: they had an epoch), then a checkpoint folder to
        report with the result of `reported_epoch`: it names the newest complete state (none yet: the fresh start,
        replayable from the seed) and that epoch, so a resumed trial replays the epochs in between silently."""
        for e, fut in self.best_pending + self.pending:
            if e < reported_epoch:  # not this epoch's own writes: they run during the next epoch
                self._wait(fut)  # a failed write raises here: the trial fails and Ray retries it from the last pointer
        self.best_pending = [(e, f) for e, f in self.best_pending if e >= reported_epoch]
        for e, _ in self.pending:
            if e < reported_epoch:
                self.complete = e
        self.pending = [(e, f) for e, f in self.pending if e >= reported_epoch]
        d = tmp / "checkpoint"
        d.mkdir(parents=True, exist_ok=True)
        state = state_name(self.complete) if self.complete is not None else None
        from data_pipeline.atomic import write_file

        write_file(d / POINTER_FILE, json.dumps({"state": state, "reported_epoch": reported_epoch}).encode())
        # the pruner (search/tune/callbacks.py) keeps the two newest pointers, by the epoch they were reported with
        write_checkpoint_metrics(d, reported_epoch, self.trainer.objective, self.value.get(reported_epoch, float("nan")))
        self.reported.append(self.complete)
        return d

    def after_report(self) -> None:
        """States older than those the two newest reported pointers name are named by no saved experiment state."""
        keep = set(self.reported[-2:])
        for old in set(self.reported[:-2]) - keep:
            if old is not None:
                self.pool.submit(delete_unpinned, self.trial_dir / state_name(old), None, self.trial_dir)
                if self.remote is not None:
                    self.pool.submit(delete_unpinned, state_name(old), self.remote)
        self.reported = self.reported[-2:]

    def finish_best(self) -> None:
        """Before the report of a trial's last epoch: its best weights written in full. Ray may end the worker soon
        after that report (a search's last trials), which would cut a background write short."""
        for _, fut in self.best_pending + self.pending:
            self._wait(fut)

    def _wait(self, fut: concurrent.futures.Future) -> None:
        """A background write's outcome. A full disk under a trial on object storage is the worker's local staging
        disk, not the storage: the error says which and what to do (Ray's own message names neither)."""
        try:
            fut.result()
        except OSError as e:
            if e.errno == errno.ENOSPC and self.remote is not None:
                raise OSError(e.errno, f"the worker's local disk is full at {self.trial_dir}: a trial on object storage "
                              "writes each state there before uploading it (up to two states of each trial running "
                              "on the machine); set TMPDIR on the workers to a volume with room") from e
            raise

    def close(self, wait: bool = True) -> None:
        """The trial ends: no state of the last epoch is needed (a finished trial is not continued), but the best
        weights being written in the background are finished: now (wait), or before the process exits."""
        if self.remote is not None:  # the local staging copy goes after the last upload (jobs run in order)
            self.pool.submit(shutil.rmtree, self.trial_dir, ignore_errors=True)
        self.pool.shutdown(wait=wait)
        if wait:  # a warm worker runs the next trial: no exit handler per finished trial piles up
            ray_internals.cancel_at_worker_exit(self.pool.shutdown)

    # ---- the writer thread ----------------------------------------------------------------------------------
    def _write_best(self, epoch: int, weights: dict, value: float) -> bool:
        """Whether the local best folder holds these very weights (what _write_state may link)."""
        def write(tmp: Path):
            ckpt.save_weights(weights, tmp / ckpt.WEIGHTS)
            save_config(self.trainer.cfg, tmp / ckpt.CONFIG)
            write_checkpoint_metrics(tmp, epoch, self.trainer.objective, value)

        dest = self.trial_dir / best_name(epoch)
        if self.remote is None and pins.pinned(pafs.LocalFileSystem(), str(dest), str(self.trial_dir)):
            # the epoch replayed after a resume, pinned by an export of an earlier version: replacing the folder
            # would drop the pin (on object storage the upload overwrites only our own files: the pin stays)
            self._delete_other_best(dest.name)
            return False
        ckpt.replace_dir(dest, write)
        self.bytes_written += _dir_bytes(dest)
        if self.remote is not None:  # whole on storage before the older one goes (pins live there, not here)
            self.remote.upload(dest, dest.name)
        self._delete_other_best(dest.name)
        return True

    def _delete_other_best(self, keep: str) -> None:
        if self.remote is not None:
            for old in self.remote.names(BEST_PREFIX):
                if old != keep:
                    delete_unpinned(old, self.remote)
        for old in self.trial_dir.glob(f"{BEST_PREFIX}*"):
            if old.name != keep:
                delete_unpinned(old) if self.remote is None else shutil.rmtree(old, ignore_errors=True)

    def _write_state(self, epoch: int, weights: dict, state: dict, linkable: bool = False) -> None:
        best = self.trial_dir / best_name(epoch) / ckpt.WEIGHTS

        def write(tmp: Path):
            linked = linkable  # the same bytes as the best folder's weights: a hard link costs no write
            if linked:
                try:
                    os.link(best, tmp / ckpt.WEIGHTS)
                except OSError:
                    linked = False
            if not linked:
                ckpt.save_weights(weights, tmp / ckpt.WEIGHTS)
                self.bytes_written += (tmp / ckpt.WEIGHTS).stat().st_size
            if self.remote is None:  # on object storage: in the middle of the upload instead (below)
                faults.during_state_write(self.trial_dir.name, epoch)
            elif (tmp / ckpt.WEIGHTS).stat().st_nlink > 1:  # linked here, but uploaded again: object storage has no links
                self.bytes_written += (tmp / ckpt.WEIGHTS).stat().st_size
            ckpt.save_state(state, tmp / ckpt.STATE)
            save_config(self.trainer.cfg, tmp / ckpt.CONFIG)
            write_checkpoint_metrics(tmp, epoch, self.trainer.objective, self.value.get(epoch, float("nan")))
            self.bytes_written += sum(f.stat().st_size for f in tmp.iterdir() if f.name != ckpt.WEIGHTS)

        dest = ckpt.replace_dir(self.trial_dir / state_name(epoch), write)
        if self.remote is not None:  # uploaded whole before any pointer names it (pointer() waits for this job)
            self.remote.upload(dest, state_name(epoch), lambda: faults.during_state_write(self.remote.name, epoch))
            shutil.rmtree(dest, ignore_errors=True)  # a resume reads it from storage: no local copy piles up


def retain_finished(trials: list[tuple["str | ObjectStoreFolder", float]], keep_best_trials: int, half_written: bool = False,
                    objective: M.Objective = M.DEFAULT_OBJECTIVE, applied: dict | None = None) -> None:
    """trials: (trial folder, best value of the search's objective) of finished trials. Their training state goes;
    best weights stay for the `keep_best_trials` best (NaN last) and where pinned (half_written: see apply_retention).
    applied: folder name -> the verdict already applied to it, kept by the caller between calls; a folder whose
    verdict has not changed is not touched again (on object storage each folder costs several requests, and a trial
    end would otherwise touch every finished trial: O(N^2) over a search). A sweep with half_written touches all."""
    from search.selection.results import rank_key

    def folder(t):
        return t if isinstance(t, ObjectStoreFolder) else Path(t)

    def name(t):
        return t.name if isinstance(t, ObjectStoreFolder) else Path(t).name

    ranked = sorted(trials, key=lambda t: rank_key(objective, t[1], name(t[0])))  # THE trial order
    for i, (path, _) in enumerate(ranked):
        keep = i < keep_best_trials
        if applied is not None and not half_written and applied.get(name(path)) == keep:
            continue
        if ended_verdict(folder(path)) != keep:
            mark_ended(folder(path), keep)
        if apply_retention(folder(path), keep, half_written) and applied is not None:
            applied[name(path)] = keep  # else touched again at the next trial end
