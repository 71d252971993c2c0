"""`mmsa status`: the table of a search's trials, its budget and who is running it now (read from the files, no Ray)."""
from __future__ import annotations

from pathlib import Path

from data_pipeline.printable import term

from search.experiment import storage
from search.selection.confirm_files import CONFIRM_DIR, checked_evidence, confirm_readable
from search.experiment.layout import warm_sources
from search.selection.opened import Experiment
from search.experiment.lock import running
from search.selection.results import (TrialSummary, _space_keys, accuracy_intervals, config_value, metric_text,
                      objective_of, tie_mark)
from search.settings.schema import ERROR, TERMINATED, M


def status_table(exp_dir: str | Path | Experiment) -> str:
    exp = Experiment.open(exp_dir)
    meta, trials = exp.meta, exp.trials
    keys = _space_keys(meta)
    obj = objective_of(meta)
    head = ["trial", "state", *[k.split(".")[1] for k in keys], "epochs", f"best {obj.metric}",
            *(k for k in STATUS_METRICS if k != obj.metric), "val_acc [95% interval]", "vs best", "best epoch", "error"]
    rows = []
    ivs = accuracy_intervals(trials)
    for t in sorted(trials, key=lambda t: t.rank):
        b = t.best
        vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (config_value(t.config, k) for k in keys)]
        iv = ivs.get(t.trial_id)
        acc = iv.fmt() if iv else f"{b[M.VAL_ACC]:.4f}" if b else "-"
        rows.append([t.trial_id, t.state, *vals, str(len(t.results)), metric_text(b, obj.metric),
                     *(metric_text(b, k) for k in STATUS_METRICS if k != obj.metric),
                     acc, tie_mark(iv), str(b[M.EPOCH]) if b else "-",
                     t.error or (f"retried after: {t.retried}" if t.retried else "")])
    head, rows = [term(x) for x in head], [[term(x) for x in r] for r in rows]  # one row per line, no escapes
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    done = sum(t.state == TERMINATED for t in trials)
    summary = f"{term(meta['name'])}: {len(trials)} of {term(meta['num_samples'])} trials started, {done} terminated, " \
              f"{sum(t.state == ERROR for t in trials)} errored; data {term(meta['data_dir'])}"
    summary += f"\n{term(budget_line(exp, trials))}"
    time_line = time_budget_line(exp)
    if time_line:
        summary += f"\n{term(time_line)}"
    summary += (f"\noptimised: {term(obj.metric)} ({'lowest' if obj.mode == 'min' else 'highest'} is best; search.metric); "
                "the best epoch of each trial is the one with the best " + term(obj.metric))
    for src in warm_sources(meta):
        summary += (f"\nwarm-started from {term(src['experiment'])}: {len(src.get('trials') or [])} of its trials given to "
                    "Optuna first" + (" (`mmsa refine`: stage 2; `mmsa report` shows both stages)"
                                      if meta.get("refined_from") == src["experiment"] else ""))
    if ivs:
        summary += ("\nval_acc: 95% bootstrap interval over the validation rows; vs best: 'tied' = the paired interval "
                    "of the accuracy difference to the best trial contains 0 (the data cannot tell them apart)")
    lease = running(exp.path)
    if lease:
        summary += f"\nrunning now: {term(lease)}"
    return "\n".join([summary, fmt(head), *(fmt(r) for r in rows)])


STATUS_METRICS = (M.VAL_LOSS, M.VAL_F1, M.VAL_WF1, *M.VAL_RECALL.values())  # val_acc has its own interval column


def time_budget_line(exp: Experiment) -> str | None:
    """The search's time budget, the time it has used and the time left (None: it has none)."""
    from data_pipeline.errors import UserError
    from search.experiment import time_used
    from search.settings.duration import describe, parse_duration

    search = exp.meta["spec"].get("search")
    try:
        budget = parse_duration(search.get("time_budget") if isinstance(search, dict) else None, "time_budget")
    except UserError:
        return "time budget: unreadable in the search's metadata (edited by hand)"
    if not budget:
        return None
    used = time_used.read(exp.path)
    if used is None:
        return f"time budget {describe(budget)}: time used unknown ({time_used.FILE} is damaged or edited)"
    left = budget - used[0]
    return (f"time budget {describe(budget)}: {describe(used[0])} used, {describe(max(left, 0))} left"
            + (f"; spent: `mmsa resume {exp.path} --time-budget LONGER` continues" if left <= 0 or used[1] else ""))


def budget_line(exp: str | Path | Experiment, search_trials: list[TrialSummary]) -> str:
    """Trial-epochs spent: the search's, plus the confirmation's when there is one."""
    n = sum(len(t.results) for t in search_trials)
    whole = exp if isinstance(exp, Experiment) else Experiment(storage.normalize(str(exp)))
    cexp = confirm_readable(storage.normalize(whole.path))
    if cexp is None:
        return f"trial-epochs spent: {n}"
    c = sum(len(t.results) for t in whole.child(CONFIRM_DIR).trials)
    ev, why = checked_evidence(whole, search_trials)
    what = (f"chose trial {ev['chosen']}'s configuration (mean of {ev['seeds']} fresh seeds); `mmsa report` shows "
            "the evidence" if ev else why if why else f"not finished: `mmsa resume {cexp}`")
    return f"trial-epochs spent: {n + c} (search {n} + confirm {c}); confirm: {what}"
