"""Reading a finished or interrupted search from disk: `mmsa status` and `mmsa export`.

Reads Ray Tune's files directly (result.json per trial, the latest experiment_state-*.json for trial states), so it
needs no running Ray and works on a copy of the experiment directory.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.errors import UserError

from . import ray_internals
from .experiment import local_dir, read_meta
from .schema import TRIAL_ID, M
from .state_backup import BACKUP_DIR


@dataclass
class TrialSummary:
    trial_id: str
    path: Path
    config: dict
    state: str
    results: list[dict] = field(default_factory=list)
    error: str = ""
    failures: int = 0

    @property
    def best(self) -> dict | None:
        # A nan or inf val_loss is never "best" (nan compares false with everything, so min() could pick it).
        finite = [r for r in self.results if isinstance(r.get(M.VAL_LOSS), (int, float)) and math.isfinite(r[M.VAL_LOSS])]
        return min(finite, key=lambda r: r[M.VAL_LOSS]) if finite else None

    @property
    def epochs(self) -> list[int]:
        return [r[M.EPOCH] for r in self.results]


def _states(exp: Path) -> dict[str, dict]:
    # Newest by the start time in the name, as Ray picks it: Ray's final sync rewrites every file, so mtimes tie.
    # A file cut short by a crash falls back to its whole copy in the backup folder, then to the older state.
    names = {p.name for p in [*exp.glob("experiment_state-*.json"), *(exp / BACKUP_DIR).glob("experiment_state-*.json")]}
    for name in sorted(names, reverse=True):
        for f in (exp / name, exp / BACKUP_DIR / name):
            states = _trial_states(f)
            if states is not None:
                return states
    return {}


def _trial_states(f: Path) -> dict[str, dict] | None:
    """Trial id -> state and failure count from one experiment_state file; None if it is missing or not whole."""
    try:
        return ray_internals.trial_states(f.read_bytes())
    except OSError:
        return None


def _error_reason(trial_dir: Path) -> str:
    f = trial_dir / "error.txt"
    if not f.is_file():
        return ""
    lines = [l.strip() for l in f.read_text(errors="replace").splitlines() if l.strip()]
    # The last line of a traceback names the exception; our own messages put the fix in it.
    return lines[-1][:300] if lines else "error"


def _row(line: str) -> dict | None:
    try:
        return json.loads(line) if line.strip() else None
    except ValueError:
        return None  # a line cut short by a crash while Ray copied the file


def load_trials(exp_dir: str | Path) -> list[TrialSummary]:
    read_meta(exp_dir)  # refuses directories that are not searches
    exp = local_dir(exp_dir)
    states = _states(exp)
    trials = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        rows = []
        if (d / "result.json").is_file():
            rows = [r for l in (d / "result.json").read_text().splitlines() if (r := _row(l)) is not None]
        tid = rows[0][TRIAL_ID] if rows else d.name.removeprefix("trial_")
        st = states.get(tid, {"state": "PENDING", "failures": 0})
        # A trial resumed after a crash may repeat the epoch that was in flight (same numbers: the loop is
        # deterministic per epoch); keep one row per epoch, the latest.
        by_epoch = {r[M.EPOCH]: r for r in rows if M.VAL_LOSS in r}
        trials.append(TrialSummary(tid, d, json.loads((d / "params.json").read_text()), st["state"],
                                   [by_epoch[e] for e in sorted(by_epoch)], _error_reason(d), st["failures"]))
    return trials


def _space_keys(meta: dict) -> list[str]:
    return list(meta["spec"]["space"])


def config_value(config: dict, key: str):
    sec, name = key.split(".")
    return config.get(sec, {}).get(name)


def status_table(exp_dir: str | Path) -> str:
    meta = read_meta(exp_dir)
    trials = load_trials(exp_dir)
    keys = _space_keys(meta)
    head = ["trial", "state", *[k.split(".")[1] for k in keys], "epochs", "best val_loss", "val_acc", "best epoch", "error"]
    rows = []
    for t in sorted(trials, key=lambda t: (t.best is None, t.best[M.VAL_LOSS] if t.best else 0)):
        b = t.best
        vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (config_value(t.config, k) for k in keys)]
        rows.append([t.trial_id, t.state, *vals, str(len(t.results)), f"{b[M.VAL_LOSS]:.4f}" if b else "-",
                     f"{b[M.VAL_ACC]:.4f}" if b else "-", str(b[M.EPOCH]) if b else "-", t.error or ""])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    done = sum(t.state == "TERMINATED" for t in trials)
    summary = f"{meta['name']}: {len(trials)} of {meta['num_samples']} trials started, {done} terminated, " \
              f"{sum(t.state == 'ERROR' for t in trials)} errored; data {meta['data_dir']}"
    return "\n".join([summary, fmt(head), *(fmt(r) for r in rows)])


def best_trial(exp_dir: str | Path) -> TrialSummary:
    usable = [t for t in load_trials(exp_dir) if t.state != "ERROR" and t.best is not None]
    if not usable:
        raise UserError(f"{exp_dir}: no trial has reported a result yet (errored trials are ignored); see `mmsa status {exp_dir}`.")
    return min(usable, key=lambda t: t.best[M.VAL_LOSS])
