"""Where `mmsa confirm` keeps its experiment and evidence inside a search's experiment (search/confirm.py runs it);
read by status, report and export without importing the confirmation itself."""
from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.errors import UserError
from model.config import Config

from . import storage
from .schema import M

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


def read_evidence(exp: str | Path) -> dict | None:
    """EXP/confirm.json when a finished confirmation wrote it (None when absent or not readable: the caller then
    falls back to the best trial)."""
    fs, path = storage.filesystem(str(exp))
    try:
        with fs.open_input_stream(f"{path}/{EVIDENCE}") as f:
            ev = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(ev, dict) or not isinstance(ev.get("candidates"), list) or not ev.get("chosen"):
        return None
    return ev


def chosen(ev: dict) -> dict:
    return next(c for c in ev["candidates"] if c.get("chosen"))


def config_key(config: dict) -> str:
    """A configuration without its seed: what the seeds of one candidate share."""
    d = Config.from_dict(config, source="trial config").to_dict()
    d["train"].pop("seed", None)
    return json.dumps(d, sort_keys=True)


def candidates(trials: list, top: int) -> list[dict]:
    """The top `top` distinct configurations by best val loss (errored trials and trials without a result left out)."""
    out, seen = [], set()
    for t in sorted((t for t in trials if t.usable), key=lambda t: t.best[M.VAL_LOSS]):
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
