"""Where `mmsa confirm` keeps its experiment and evidence inside a search's experiment (search/commands/confirm.py runs it);
read by status, report and export without importing the confirmation itself."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from data_pipeline.errors import UserError
from model.config import Config

from search.experiment import storage
from search.selection.results import TrialSummary, best_row_scores, objective_of, ranked
from search.settings.schema import ERROR, M
from search.selection.stats import compare
from search.selection.opened import Experiment

CONFIRM_DIR = "confirm"  # EXP/confirm: the confirmation's experiment
EVIDENCE = "confirm.json"  # EXP/confirm.json: what it found


def confirm_location(exp: str) -> str:
    return storage.join(exp, CONFIRM_DIR)


def check_confirm_dir(exp: str, cexp: str) -> None:
    """EXP/confirm is a plain folder of the experiment (or absent): never a link that would send the confirmation's
    trials, checkpoints and state somewhere outside (data_pipeline/safe_files.py)."""
    import os

    from data_pipeline.safe_files import is_dir

    if not storage.is_uri(cexp) and os.path.lexists(cexp) and not is_dir(cexp, exp):
        raise UserError(f"{cexp}: a link or not a folder; a confirmation writes its trials there, inside {exp}. "
                        "Remove it, then confirm again.")


def confirm_readable(exp: str) -> str | None:
    """EXP/confirm when it may be read: a plain folder of the experiment with its metadata (None otherwise: absent,
    or a link that would make status/report/export count and present another folder's trials as this search's)."""
    from search.experiment.layout import meta_exists

    cexp = confirm_location(exp)
    try:
        check_confirm_dir(exp, cexp)
    except UserError:
        return None
    return cexp if meta_exists(cexp) else None


def read_evidence(exp: str | Path) -> tuple[dict | None, str | None]:
    """EXP/confirm.json as written: (its content, None), (None, None) when there is none, (None, why) when it is
    damaged. Its numbers are not checked here: `checked_evidence` does that before anything presents them."""
    fs, path = storage.filesystem(str(exp))
    data = storage.read_bytes(fs, f"{path}/{EVIDENCE}")
    if data is None:
        return None, None
    ev = storage.parse_json(data)
    if not isinstance(ev, dict) or not isinstance(ev.get("candidates"), list) or not ev.get("chosen"):
        return None, f"{exp}/{EVIDENCE} is damaged (not the JSON `mmsa confirm` writes): it is not used"
    return ev, None


def checked_evidence(exp: str | Experiment, trials: list) -> tuple[dict | None, str | None]:
    """The confirmation's evidence, only where EXP/confirm's own trials reproduce it (the rule of `mmsa confirm`,
    search/commands/confirm.py evidence, run again on them) and it confirms configurations of this search (`trials`, as
    search/results.load_trials reads them): anyone who can write the folder can write a confirm.json naming any
    configuration, epoch count or model. Returns (evidence, None) to use; (evidence, why) when it is right but the
    search has changed since (shown, not exported); (None, why) when it is not evidence; (None, None) when there is
    none."""

    opened = Experiment.open(exp)
    exp = opened.path
    ev, why = read_evidence(exp)
    if ev is None:
        return None, why
    cexp = confirm_location(exp)
    unused = f"{exp}/{EVIDENCE} is not used"
    if confirm_readable(exp) is None:
        return None, f"{unused}: there is no confirmation experiment ({cexp}) whose trials it could come from"
    try:
        again = evidence(opened)
        search_keys = {t.trial_id: config_key(t.config) for t in trials}
        foreign = [c["trial_id"] for c in again["candidates"]
                   if search_keys.get(c["trial_id"]) != config_key(c["config"])]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError, RecursionError, UserError) as e:
        return None, f"{unused}: its confirmation experiment {cexp} cannot be read ({e})"
    if foreign:
        return None, (f"{unused}: it names configurations that are not those of this search's trials "
                      f"({', '.join(map(str, foreign))})")
    if not _agrees(ev, again, top=True) or not again.get("chosen"):
        return None, f"{unused}: the trials of {cexp} do not give its numbers (written by something else, or edited)"
    return again, stale(exp, again, trials)


def _agrees(claimed, recomputed, top: bool = False) -> bool:
    """Whether every value the file states is what the recomputation gives. Keys the recomputation has and the file
    lacks are allowed (a confirmation written by an older mmsa, before a metric was added: what is used is the
    recomputation anyway); the folder it was computed in is not compared (it may have moved)."""
    if isinstance(claimed, dict):
        return isinstance(recomputed, dict) and all(
            k in recomputed and _agrees(v, recomputed[k]) for k, v in claimed.items() if not (top and k == "experiment"))
    if isinstance(claimed, list):
        return isinstance(recomputed, list) and len(claimed) == len(recomputed) and all(
            _agrees(a, b) for a, b in zip(claimed, recomputed))
    return json.dumps(claimed) == json.dumps(recomputed)  # exact, as JSON wrote it (NaN == NaN, 1 != 1.0 != True)


def chosen(ev: dict) -> dict:
    return next(c for c in ev["candidates"] if c.get("chosen"))


def config_key(config: dict) -> str:
    """A configuration without its seed: what the seeds of one candidate share."""
    d = Config.from_dict(config, source="trial config").to_dict()
    d["train"].pop("seed", None)
    return json.dumps(d, sort_keys=True)


def candidates(trials: list, top: int) -> list[dict]:
    """The top `top` distinct configurations by the search's objective (errored trials and trials without a result
    left out)."""
    out, seen = [], set()
    for t in ranked(trials):
        k = config_key(t.config)
        if k not in seen:
            seen.add(k)
            out.append({"trial_id": t.trial_id, "config": t.config, "search_best_val_loss": float(t.best[M.VAL_LOSS]),
                        "search_best_epoch": int(t.best[M.EPOCH])})
        if len(out) == top:
            break
    return out


def stale(exp: str, ev: dict, trials: list) -> str | None:
    """Why a finished confirmation no longer answers for the search (None when it still does): the search was
    resumed or extended since, and its top configurations (of `trials`, search/results.load_trials) are not the ones
    confirmed."""
    then = [c["trial_id"] for c in ev.get("candidates") or []]
    now = [c["trial_id"] for c in candidates(trials, int(ev.get("top") or len(then)))]
    if set(now) == set(then):  # the same configurations: their order in the search does not matter to confirm
        return None
    return (f"{exp}/{EVIDENCE} confirmed the top configurations of the search as it was ({', '.join(then)}), but the "
            f"search has changed since (its top is now {', '.join(now)}): that confirmation is not used. To confirm "
            f"again, move {exp}/{CONFIRM_DIR} and {exp}/{EVIDENCE} away, then run `mmsa confirm {exp}`.")


def _std(xs: list[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def evidence(exp: str | Experiment) -> dict:
    """What the confirmation found (see the module docstring); the chosen configuration has the best optimum of its
    mean curve of the search's objective (search.metric; default: the lowest minimum of the mean val-loss curve).
    exp: the search (its open Experiment's confirmation is read once)."""
    cx = Experiment.open(exp).child(CONFIRM_DIR)
    exp = str(exp)
    cm = cx.meta
    obj = objective_of(cm)
    trials = cx.trials
    by_key: dict[str, list[TrialSummary]] = {}
    for t in trials:
        if t.state != ERROR and t.results:
            by_key.setdefault(config_key(t.config), []).append(t)
    rows, scores, label_rows = [], {}, {}
    for c in cm["candidates"]:
        runs = by_key.get(config_key(c["config"]), [])
        row = {"trial_id": c["trial_id"], "search_best_val_loss": c["search_best_val_loss"],
               "search_best_epoch": c.get("search_best_epoch"), "seeds": c.get("seeds"), "runs": len(runs),
               "config": c["config"]}
        runs = [t for t in runs if t.usable]
        if runs:
            length = min(len(t.results) for t in runs)
            curve = [float(np.mean([t.results[e].get(obj.metric, math.nan) for t in runs])) for e in range(length)]
            e = obj.best_index(curve)
            row |= {
                "best_val_loss_mean": float(np.mean([t.best[M.VAL_LOSS] for t in runs])),
                "best_val_loss_std": _std([t.best[M.VAL_LOSS] for t in runs]),
                "best_val_acc_mean": float(np.mean([t.best[M.VAL_ACC] for t in runs])),
                "best_val_acc_std": _std([t.best[M.VAL_ACC] for t in runs]),
                "mean_curve": curve, "epochs": e + 1, "value_at_epochs": curve[e],
                "val_loss_at_epochs": float(np.mean([t.results[e][M.VAL_LOSS] for t in runs])),
                "val_acc_at_epochs": float(np.mean([t.results[e][M.VAL_ACC] for t in runs])),
                "val_f1_at_epochs": float(np.mean([t.results[e][M.VAL_F1] for t in runs])),
                "train_loss_at_epochs": float(np.mean([t.results[e][M.TRAIN_LOSS] for t in runs])),
                **{f"{k}_at_epochs": float(np.mean([t.results[e].get(k, math.nan) for t in runs]))
                   for k in (M.VAL_WF1, *M.VAL_RECALL.values())},
            }
            per_row = [best_row_scores(t) for t in runs]
            if per_row and all(p is not None and p[1] == per_row[0][1] for p in per_row):
                scores[c["trial_id"]] = np.mean([p[0] for p in per_row], axis=0)  # mean accuracy per row over seeds
                label_rows[c["trial_id"]] = per_row[0][1]
        rows.append(row)
    done = [r for r in rows if "value_at_epochs" in r and math.isfinite(r["value_at_epochs"])]
    chosen = min(done, key=lambda r: obj.key(r["value_at_epochs"])) if done else None
    ivs = compare(scores, chosen["trial_id"] if chosen else None, label_rows)
    for r in rows:
        iv = ivs.get(r["trial_id"])
        r["val_acc_interval"] = [iv.lo, iv.hi] if iv else None
        r["tied"] = bool(iv.tied) if iv and iv.tied is not None else None
        r["chosen"] = r is chosen
    return {"experiment": exp, "metric": obj.metric, "top": cm["top"], "seeds": cm["seeds"], "search_trials": cm.get("search_trials"),
            "trials": len(trials), "trial_epochs": sum(len(t.results) for t in trials),
            "chosen": chosen["trial_id"] if chosen else None, "candidates": rows}
