"""Reading a finished or interrupted search from disk: `mmsa status` and `mmsa export`.

Reads Ray Tune's files directly (result.json per trial, the latest experiment_state-*.json for trial states), so it
needs no running Ray and works on a copy of the experiment directory.
"""
from __future__ import annotations

import json

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline import safe_files
from data_pipeline.errors import UserError
from data_pipeline.printable import term

from . import ray_internals, storage, trial_backup
from .experiment import local_dir, read_meta, warm_sources
from .lock import describe, holder, read_lease
from .schema import TRIAL_ID, VAL_LABEL, VAL_PRED, M
from .stats import Interval, compare, correct_rows
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
    objective: M.Objective = M.DEFAULT_OBJECTIVE  # the search's search.metric: what "best" means

    @property
    def best(self) -> dict | None:
        """The best epoch's row by the objective; a nan or inf value is never best."""
        return self.objective.best_row(self.results)

    @property
    def score(self) -> float:
        """The best epoch's objective value as a sort key (smaller is better); only for usable trials."""
        return self.objective.key(self.objective.value(self.best))

    @property
    def usable(self) -> bool:
        """Whether a selection may pick it: not errored, with an epoch of finite objective value."""
        return self.state != "ERROR" and self.best is not None

    @property
    def epochs(self) -> list[int]:
        return [r[M.EPOCH] for r in self.results]


def _states(exp: Path) -> dict[str, dict]:
    # Newest by the start time in the name, as Ray picks it: Ray's final sync rewrites every file, so mtimes tie.
    # A file cut short by a crash falls back to its whole copy in the backup folder, then to the older state.
    names = {p.name for p in [*exp.glob("experiment_state-*.json"), *(exp / BACKUP_DIR).glob("experiment_state-*.json")]}
    for name in sorted(names, reverse=True):
        for f in (exp / name, exp / BACKUP_DIR / name):
            states = _trial_states(f, exp)
            if states is not None:
                return states
    return {}


def _trial_states(f: Path, exp: Path) -> dict[str, dict] | None:
    """Trial id -> state and failure count from one experiment_state file; None if it is missing or not whole."""
    data = _read(f, exp)
    return None if data is None else ray_internals.trial_states(data)


def _error_reason(trial_dir: Path, exp: Path) -> str:
    data = _read(trial_dir / "error.txt", exp)
    if data is None:
        return ""
    lines = [l.strip() for l in data.decode(errors="replace").splitlines() if l.strip()]
    # The last line of a traceback names the exception; our own messages put the fix in it.
    return lines[-1][:300] if lines else "error"


def objective_of(meta: dict) -> M.Objective:
    """The objective a search's metadata names (search.metric); searches from before the setting: val loss."""
    spec = meta.get("spec") if isinstance(meta, dict) else None
    search = spec.get("search") if isinstance(spec, dict) else None
    return M.objective(search.get("metric") if isinstance(search, dict) and isinstance(search.get("metric"), str) else None)


def load_trials(exp_dir: str | Path) -> list[TrialSummary]:
    objective = objective_of(read_meta(exp_dir))  # read_meta refuses directories that are not searches
    exp = local_dir(exp_dir)
    states = _states(exp)
    fs, root = storage.filesystem(exp)
    backed_up = set(trial_backup.backed_up_trials(fs, root))
    live = {p.name for p in exp.iterdir() if p.name.startswith("trial_") and safe_files.is_dir(p, exp)}
    trials = []
    for name in sorted(live | backed_up):
        d = exp / name
        params = trial_backup.parse_params(_read(d / trial_backup.PARAMS, exp))
        rows = trial_backup.parse_rows(_read(d / trial_backup.RESULTS, exp))
        if name in backed_up:  # a full disk or a crash may have left Ray's own copies empty or short
            saved_params, saved_rows = trial_backup.read_backup(fs, root, name)
            params = params if params is not None else saved_params
            rows = trial_backup.by_epoch(saved_rows, rows)
        else:
            rows = trial_backup.by_epoch(rows)
        if params is None:
            continue  # not a trial Ray got to start (or one without any readable config)
        tid = rows[0][TRIAL_ID] if rows and TRIAL_ID in rows[0] else name.removeprefix("trial_")
        st = states.get(tid, {"state": "PENDING", "failures": 0})
        # A trial resumed after a crash may repeat the epoch that was in flight (same numbers: the loop is
        # deterministic per epoch); by_epoch keeps one row per epoch, the latest.
        trials.append(TrialSummary(tid, d, params, st["state"], rows, _error_reason(d, exp), st["failures"], objective))
    return trials


def _read(path: Path, exp: Path) -> bytes | None:
    """A file of the experiment, never through a link below it (data_pipeline/safe_files.py)."""
    return safe_files.read_bytes(path, exp)


def _space_keys(meta: dict) -> list[str]:
    return list(meta["spec"]["space"])


def config_value(config: dict, key: str):
    sec, name = key.split(".")
    return config.get(sec, {}).get(name)


def status_table(exp_dir: str | Path) -> str:
    meta = read_meta(exp_dir)
    trials = load_trials(exp_dir)
    keys = _space_keys(meta)
    obj = objective_of(meta)
    head = ["trial", "state", *[k.split(".")[1] for k in keys], "epochs", f"best {obj.metric}",
            *(k for k in STATUS_METRICS if k != obj.metric), "val_acc [95% interval]", "vs best", "best epoch", "error"]
    rows = []
    ivs = accuracy_intervals(trials)
    for t in sorted(trials, key=lambda t: (t.best is None, t.score if t.best else 0)):
        b = t.best
        vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (config_value(t.config, k) for k in keys)]
        iv = ivs.get(t.trial_id)
        acc = iv.fmt() if iv else f"{b[M.VAL_ACC]:.4f}" if b else "-"
        rows.append([t.trial_id, t.state, *vals, str(len(t.results)), metric_text(b, obj.metric),
                     *(metric_text(b, k) for k in STATUS_METRICS if k != obj.metric),
                     acc, tie_mark(iv), str(b[M.EPOCH]) if b else "-", t.error or ""])
    head, rows = [term(x) for x in head], [[term(x) for x in r] for r in rows]  # one row per line, no escapes
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    done = sum(t.state == "TERMINATED" for t in trials)
    summary = f"{term(meta['name'])}: {len(trials)} of {term(meta['num_samples'])} trials started, {done} terminated, " \
              f"{sum(t.state == 'ERROR' for t in trials)} errored; data {term(meta['data_dir'])}"
    summary += f"\n{term(budget_line(exp_dir, trials))}"
    summary += (f"\noptimised: {term(obj.metric)} ({'lowest' if obj.mode == 'min' else 'highest'} is best; search.metric); "
                "the best epoch of each trial is the one with the best " + term(obj.metric))
    for src in warm_sources(meta):
        summary += (f"\nwarm-started from {term(src['experiment'])}: {len(src.get('trials') or [])} of its trials given to "
                    "Optuna first" + (" (`mmsa refine`: stage 2; `mmsa report` shows both stages)"
                                      if meta.get("refined_from") == src["experiment"] else ""))
    if ivs:
        summary += ("\nval_acc: 95% bootstrap interval over the validation rows; vs best: 'tied' = the paired interval "
                    "of the accuracy difference to the best trial contains 0 (the data cannot tell them apart)")
    lease = holder(read_lease(str(exp_dir)))
    if lease:
        summary += f"\nrunning now: {term(describe(lease))}"
    return "\n".join([summary, fmt(head), *(fmt(r) for r in rows)])


STATUS_METRICS = (M.VAL_LOSS, M.VAL_F1, M.VAL_WF1, *M.VAL_RECALL.values())  # val_acc has its own interval column


def metric_text(row: dict | None, key: str) -> str:
    """A best row's metric for a table: '-' where absent (a trial from before the metric existed)."""
    v = (row or {}).get(key)
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def best_of(trials: list[TrialSummary]) -> TrialSummary | None:
    ok = [t for t in trials if t.usable]
    return min(ok, key=lambda t: t.score) if ok else None


def best_trial(exp_dir: str | Path, trials: list[TrialSummary] | None = None) -> TrialSummary:
    """trials: the experiment's, when the caller has read them already."""
    b = best_of(load_trials(exp_dir) if trials is None else trials)
    if b is None:
        raise UserError(f"{exp_dir}: no trial has reported a result yet (errored trials are ignored); see `mmsa status {exp_dir}`.")
    return b


def warm_stages(meta: dict) -> list[tuple[dict, dict | None, list[TrialSummary], str]]:
    """The searches a warm-started one started from (`mmsa refine`, `--warm-start`): (its warm_start entry, its
    metadata, its trials, ""), or (entry, None, [], why) for one that cannot be read now (moved or deleted since)."""
    out = []
    for src in warm_sources(meta):
        try:
            out.append((src, read_meta(src["experiment"]), load_trials(src["experiment"]), ""))
        except Exception as e:  # noqa: BLE001 - whatever is there now: say so, show the rest
            out.append((src, None, [], str(e)))
    return out


def best_row_scores(t: TrialSummary) -> tuple[np.ndarray, str] | None:
    """Per validation row 1/0 (right/wrong) at the trial's best epoch, and the rows' labels; None for trials that
    ran before predictions were kept (or whose best row lacks them)."""
    b = t.best
    if b is None or not isinstance(b.get(VAL_LABEL), str):
        return None
    c = correct_rows(b.get(VAL_PRED), b[VAL_LABEL])
    return None if c is None else (c, b[VAL_LABEL])


def accuracy_intervals(trials: list[TrialSummary]) -> dict[str, Interval]:
    """Trial id -> its best epoch's val accuracy with a 95% interval and whether it is tied with the best trial
    (the one `mmsa export` picks); only trials whose best epoch kept its validation predictions."""
    scored = {t.trial_id: best_row_scores(t) for t in trials if t.state != "ERROR"}
    scored = {k: v for k, v in scored.items() if v is not None}
    ref = best_of([t for t in trials if t.trial_id in scored])
    ref = ref.trial_id if ref else None
    return compare({k: v[0] for k, v in scored.items()}, ref, {k: v[1] for k, v in scored.items()})


def tie_mark(iv: Interval | None) -> str:
    if iv is None:
        return "-"
    if iv.ref:
        return "best"
    if iv.tied is None:  # evaluated on other validation rows (the split was searched): not comparable
        return "-"
    return "tied" if iv.tied else ("higher" if iv.diff_lo > 0 else "lower")


def budget_line(exp: str | Path, search_trials: list[TrialSummary]) -> str:
    """Trial-epochs spent: the search's, plus the confirmation's when there is one."""
    from .confirm_files import checked_evidence, confirm_location
    from .experiment import meta_exists

    n = sum(len(t.results) for t in search_trials)
    cexp = confirm_location(storage.normalize(str(exp)))
    if not meta_exists(cexp):
        return f"trial-epochs spent: {n}"
    c = sum(len(t.results) for t in load_trials(cexp))
    ev, why = checked_evidence(storage.normalize(str(exp)), search_trials)
    what = (f"chose trial {ev['chosen']}'s configuration (mean of {ev['seeds']} fresh seeds); `mmsa report` shows "
            "the evidence" if ev else why if why else f"not finished: `mmsa resume {cexp}`")
    return f"trial-epochs spent: {n + c} (search {n} + confirm {c}); confirm: {what}"
