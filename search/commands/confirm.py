"""`mmsa confirm EXP --top K --seeds S`: re-train the search's top-K configurations with S fresh seeds each and pick
by the mean, not by the luckiest curve.

The confirmation is an experiment of its own in EXP/confirm (its own mmsa_search.yaml, Ray state, lease and trial
folders: `mmsa resume EXP/confirm` continues it after a crash, `mmsa status EXP/confirm` lists its trials). Its
trials are the K configurations with train.seed = the configuration's seed + 1 .. + S, each trained for all its
epochs (no ASHA: a seed is not stopped for being unlucky early). When it has finished, the evidence goes to
EXP/confirm.json (JSON, written whole): per configuration the mean +/- std over seeds of the best val loss and
accuracy, the mean validation-loss curve and its minimum (the epoch count), a 95% interval of the mean accuracy
and which configurations are tied with the chosen one. `mmsa export EXP` then exports the chosen configuration,
`mmsa report EXP` shows the evidence, and `mmsa status EXP` counts its trial-epochs in the budget.
"""
from __future__ import annotations

import json

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError
from data_pipeline.printable import md
from model.config import Config

from search.experiment import layout as experiment

from search.experiment import storage
from search.experiment.lock import ExperimentLock, holder, read_lease, refuse_held
from search.settings.schema import ENDED, FINISHED, M

from search.selection.confirm_files import (CONFIRM_DIR, EVIDENCE, candidates, check_confirm_dir, chosen, config_key, confirm_location, evidence,  # noqa: F401
                            read_evidence, stale)
from search.selection.opened import Experiment
SEED_KEY = "train.seed"


def check_confirm_args(top, seeds) -> None:
    from search.settings.cli_flags import OPTIONS

    OPTIONS["top"].check(top)
    OPTIONS["seeds"].check(seeds)


def parent_of(cexp: str) -> str:
    return storage.normalize(str(cexp)).rstrip("/").rsplit("/", 1)[0]


def points(cands: list[dict], seeds: int) -> list[dict]:
    out = []
    for c in cands:
        cfg = Config.from_dict(c["config"], source="trial config")
        c["seeds"] = [cfg.train.seed + 1 + j for j in range(seeds)]
        out += [cfg.with_overrides({SEED_KEY: s}).to_dict() for s in c["seeds"]]
    return out


def run_confirm(exp_dir: str, top: int = 3, seeds: int = 3, *, address: str | None = None, verbose: int = 1, log=print,
                break_lock: bool = False, shared_storage: bool = False):
    from data_pipeline.preprocess import check_same_data

    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    check_confirm_args(top, seeds)
    opened = Experiment.open(exp_dir, normalize=True)
    exp, meta = opened.path, opened.meta
    experiment.refuse_confirm_run(meta, exp, f"confirm the search it belongs to ({parent_of(exp)}).")
    cexp = confirm_location(exp)
    check_confirm_dir(exp, cexp)
    confirmation = opened.child(CONFIRM_DIR)
    if confirmation.exists() and experiment.ever_ran(cexp):
        cm = confirmation.meta
        if not finished(confirmation):
            raise UserError(f"{cexp}: a confirmation of this search was started and has not finished; continue it with "
                            f"`mmsa resume {cexp}`.")
        if (cm.get("top"), cm.get("seeds")) != (top, seeds):
            raise UserError(f"{cexp}: this search was confirmed already with --top {cm.get('top')} --seeds "
                            f"{cm.get('seeds')}; its evidence is in {exp}/{EVIDENCE}. To confirm again with other "
                            f"settings, move or delete {cexp} first.")
        log(f"{cexp}: the confirmation has finished already; rewriting its evidence")
        return write_evidence(opened)
    if not break_lock:
        refuse_held(exp, holder(read_lease(exp)), "confirm the search when it has finished (or pass --break-lock if you "
                    "know its holder is gone).")
    trials = opened.trials
    cands = candidates(trials, top)
    if not cands:
        raise UserError(f"{exp}: no trial has reported a result yet (errored trials are ignored); nothing to confirm.")
    check_same_data(exp, meta["data_fingerprint"], meta["data_dir"], meta["data_dir"], "its configurations cannot be "
                    "confirmed on other data. Start a new search.")
    spec = parse_spec(meta["spec"], f"{exp}/{experiment.META}")
    pts = points(cands, seeds)
    extra = {experiment.CONFIRM_RUN: True, "confirm_of": meta["name"], "top": top, "seeds": seeds,
             "search_trials": len(trials), "candidates": cands}
    log(f"confirming the top {len(cands)} configuration(s) of {exp} with {seeds} fresh seed(s) each: "
        f"{len(pts)} trials of up to {spec.fixed.train.epochs} epochs")
    with ExperimentLock(exp, f"mmsa confirm {exp}", break_lock):  # the search is not resumed meanwhile
        run_search(spec, len(pts), CONFIRM_DIR, exp, address=address, verbose=verbose, log=log, points=pts,
                   extra_meta=extra, break_lock=break_lock,
                   shared_storage=shared_storage or meta.get("shared_storage") is True)  # as the search was told
        if finished(cexp):
            return write_evidence(exp)
    return None


def resume_confirm(cexp: str | Experiment, *, address: str | None = None, verbose: int = 1,
                   trust_state: bool = False, log=print, break_lock: bool = False, shared_storage: bool = False):
    from search.tune.tuner import resume_search

    confirmation = Experiment.open(cexp)
    exp = parent_of(confirmation.path)
    check_confirm_dir(exp, confirmation.path)
    with ExperimentLock(exp, f"mmsa resume {confirmation}", break_lock):
        resume_search(confirmation, address=address, verbose=verbose, trust_state=trust_state, log=log,
                      break_lock=break_lock, shared_storage=shared_storage)
        if finished(confirmation):
            return write_evidence(exp)
    return None


def finished(cexp: str | Experiment) -> bool:
    """Whether every trial of the confirmation has ended, as its files say now (read again: it may have run)."""
    confirmation = Experiment.open(cexp)
    meta = confirmation.meta
    trials = confirmation.fresh_trials()
    # Without ASHA every trial ends by itself: its last row says so even where Ray's state file lags behind.
    return len(trials) >= meta["num_samples"] and all(
        t.state in ENDED or (t.results and t.results[-1].get(FINISHED)) for t in trials)


def write_evidence(exp: str | Experiment) -> dict:
    ev = evidence(exp)
    fs, path = storage.filesystem(str(exp))
    write_file(f"{path}/{EVIDENCE}", json.dumps(ev, indent=1).encode(), fs)
    return ev


def evidence_markdown(ev: dict) -> list[str]:
    lines = ["## Confirmation (`mmsa confirm`)", "",
             f"The top {len(ev['candidates'])} configurations re-trained with {md(ev['seeds'])} fresh seeds each "
             f"({md(ev['trials'])} trials, {md(ev['trial_epochs'])} trial-epochs, all epochs, no early stopping by ASHA). "
             + (f"Chosen: the best of the mean {md(ev['metric'])} curve over seeds (search.metric); its epoch count is where "
                "that optimum is." if ev.get("metric", M.VAL_LOSS) != M.VAL_LOSS else
                "Chosen: the lowest minimum of the mean validation-loss curve over seeds; its epoch count is where that "
                "minimum is.") + " Accuracy interval: 95% bootstrap over the validation rows of the per-row accuracy averaged "
             "over seeds; tied: the paired interval of the difference to the chosen one contains 0.", "",
             "| search trial | search best val loss | seeds | best val loss (mean +/- std) | best val acc (mean +/- std) "
             "| epochs | mean val loss at epochs | mean val acc at epochs | mean val macro-F1 at epochs | 95% interval "
             "| vs chosen |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in ev["candidates"]:
        if "best_val_loss_mean" not in c:
            lines.append(f"| {md(c['trial_id'], code=True)} | {c['search_best_val_loss']:.4f} | 0 | - | - | - | - | - | - | - | no result |")
            continue
        iv = c.get("val_acc_interval")
        mark = "**chosen**" if c.get("chosen") else {True: "tied", False: "not tied"}.get(c.get("tied"), "-")
        lines.append(f"| {md(c['trial_id'], code=True)} | {c['search_best_val_loss']:.4f} | {md(c['runs'])} | "
                     f"{c['best_val_loss_mean']:.4f} +/- {c['best_val_loss_std']:.4f} | "
                     f"{c['best_val_acc_mean']:.4f} +/- {c['best_val_acc_std']:.4f} | {md(c['epochs'])} | "
                     f"{c['val_loss_at_epochs']:.4f} | {c['val_acc_at_epochs']:.4f} | {c['val_f1_at_epochs']:.4f} | "
                     + (f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "-") + f" | {mark} |")
    return lines + [""]
