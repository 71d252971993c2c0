"""Reading a finished or interrupted search from disk: `mmsa status` and `mmsa export`.

Reads Ray Tune's files directly (result.json per trial, the latest experiment_state-*.json for trial states), so it
needs no running Ray and works on a copy of the experiment directory.
"""
from __future__ import annotations

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline import safe_files
from data_pipeline.errors import UserError

from search.experiment import ray_internals, storage, trial_backup
from search.experiment.layout import local_dir, read_meta, warm_sources
from search.settings.schema import ERROR, PENDING, TERMINATED, TRIAL_ID, VAL_LABEL, VAL_PRED, M
from search.selection.stats import Interval, compare, correct_rows
from search.experiment.state_backup import BACKUP_DIR


def rank_key(objective: M.Objective, value, name: str) -> tuple:
    """THE order of trials, best first, that every selection and listing sorts by (best trial, refine's top trials,
    confirm's candidates, which finished trials keep their best weights, status and report tables, the benches):
    by the objective's value; a value that is not finite (NaN, inf, none) after every finite one; equal values by
    trial folder name."""
    v = M.finite(value)
    return (v is None, 0.0 if v is None else objective.key(v), name)


@dataclass
class TrialSummary:
    trial_id: str
    path: Path  # its folder; for an experiment at a URI a removed temporary copy, so only .name is meaningful
    config: dict
    state: str
    results: list[dict] = field(default_factory=list)
    error: str = ""  # why it ended in ERROR; empty for any other state
    failures: int = 0
    objective: M.Objective = M.DEFAULT_OBJECTIVE  # the search's search.metric: what "best" means
    retried: str = ""  # the last failure Ray retried, of a trial that did not end in ERROR (error.txt stays after it)

    @property
    def best(self) -> dict | None:
        """The best epoch's row by the objective; a nan or inf value is never best."""
        return self.objective.best_row(self.results)

    @property
    def rank(self) -> tuple:
        """This trial's place in THE order of trials (rank_key), for any trial."""
        return rank_key(self.objective, self.objective.value(self.best), self.path.name)

    @property
    def usable(self) -> bool:
        """THE rule for whether a selection may pick it (best trial, refine, confirm, intervals, Optuna's history in
        the report, the benches): not errored, with an epoch of finite objective value."""
        return self.state != ERROR and self.best is not None

    @property
    def epochs(self) -> list[int]:
        return [r[M.EPOCH] for r in self.results]


def _states(exp: Path) -> dict[str, dict]:
    # Newest first, as Tuner.restore picks it (ray_internals.newest_first).
    # A file cut short by a crash falls back to its whole copy in the backup folder, then to the older state.
    pattern = ray_internals.TRIAL_TABLE_PATTERN
    names = {p.name for p in [*exp.glob(pattern), *(exp / BACKUP_DIR).glob(pattern)]}
    for name in ray_internals.newest_first(names):
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


def load_trials(exp_dir) -> list[TrialSummary]:
    """The trials as they are on disk now. exp_dir: a path, or an open Experiment (search/selection/opened.py), whose
    metadata is not read again."""
    objective = objective_of(read_meta(exp_dir))  # read_meta refuses directories that are not searches
    with local_dir(str(exp_dir)) as exp:  # a URI's temporary copy is removed after reading; trials keep only names
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
            tid = rows[0].get(TRIAL_ID) if rows else None
            tid = tid if isinstance(tid, str) and tid else name.removeprefix("trial_")  # a hand-made id: the folder's
            st = states.get(tid, {"state": PENDING, "failures": 0})
            # A trial resumed after a crash may repeat the epoch that was in flight (same numbers: the loop is
            # deterministic per epoch); by_epoch keeps one row per epoch, the latest.
            # Ray keeps a failed attempt's error.txt after the retry finishes the trial: only an ERROR trial's is its error.
            reason = _error_reason(d, exp)
            errored = st["state"] == ERROR or tid not in states  # not in Ray's saved state: nothing says it was retried
            trials.append(TrialSummary(tid, d, params, st["state"], rows, reason if errored else "", st["failures"],
                                       objective, "" if errored else reason))
        return trials


def _read(path: Path, exp: Path) -> bytes | None:
    """A file of the experiment, never through a link below it (data_pipeline/safe_files.py)."""
    return safe_files.read_bytes(path, exp)


def _space_keys(meta: dict) -> list[str]:
    return list(meta["spec"]["space"])


def config_value(config: dict, key: str):
    sec, name = key.split(".")
    section = config.get(sec) if isinstance(config, dict) else None
    return section.get(name) if isinstance(section, dict) else None  # a hand-edited params.json: no value




def metric_text(row: dict | None, key: str) -> str:
    """A best row's metric for a table: '-' where absent (a trial from before the metric existed)."""
    v = (row or {}).get(key)
    return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def ranked(trials: list[TrialSummary], finished_only: bool = False) -> list[TrialSummary]:
    """The usable trials (finished_only: of those, the TERMINATED ones), best first by rank_key."""
    return sorted((t for t in trials if t.usable and (t.state == TERMINATED or not finished_only)), key=lambda t: t.rank)


def best_of(trials: list[TrialSummary]) -> TrialSummary | None:
    """THE best trial: the first of `ranked`; None when no trial is usable."""
    r = ranked(trials)
    return r[0] if r else None


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
    scored = {t.trial_id: best_row_scores(t) for t in trials if t.usable}
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
