"""The wall time a search has used, kept in the experiment so that its time budget (search.time_budget) counts across
resumes. Written by the driver while the search runs (search/tune/time_budget.py); read by resume and status.

The file is JSON, {"used_s": seconds, "spent": bool}; like every file of an experiment it is untrusted input: a
damaged or edited one reads as None (the callers say so), never as a traceback or as code."""
from __future__ import annotations

import json
import math

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError

from search.experiment import storage
from search.settings.duration import describe, longer

FILE = ".mmsa-time-used.json"
MAX_S = 100 * 365 * 86400  # more than any search runs: a bigger number was edited in


def is_spent(used_s: float, budget_s: float | None) -> bool:
    """THE rule for a spent budget (the running search's stopper, resume's refusal, a relaunch's "nothing to run")."""
    return budget_s is not None and used_s >= budget_s


def path(exp: str) -> str:
    return f"{storage.normalize(str(exp)).rstrip('/')}/{FILE}"


def read(exp) -> tuple[float, bool] | None:
    """(seconds used, whether a budget stopped the search); (0, False) when the search has none yet; None: damaged."""
    fs, p = storage.filesystem(str(exp))
    if not storage.is_file(fs, f"{p}/{FILE}", p):
        return 0.0, False
    d = storage.parse_json(storage.read_bytes(fs, f"{p}/{FILE}", p))
    used = d.get("used_s") if isinstance(d, dict) else None
    if isinstance(used, bool) or not isinstance(used, (int, float)) or not math.isfinite(used) or not 0 <= used <= MAX_S:
        return None
    return float(used), d.get("spent") is True


def write(exp, used_s: float, spent: bool) -> None:
    fs, p = storage.filesystem(str(exp))
    write_file(f"{p}/{FILE}", json.dumps({"used_s": round(used_s, 3), "spent": spent}).encode(), fs)


def damaged(exp) -> str:
    return (f"{exp}/{FILE}: the time this search has used cannot be read (damaged or edited). Delete the file to count "
            "its time budget from zero again, or restore it from a copy of the experiment.")


def read_checked(exp) -> tuple[float, bool]:
    """read(), with a time file that cannot be read refused (UserError), never taken as "nothing used"."""
    used = read(exp)
    if used is None:
        raise UserError(damaged(exp))
    return used


def spent_line(exp, budget_s: float | None, used: tuple[float, bool] | None = None) -> str | None:
    """THE pre-run check of a time budget (resume's refusal, a restarted job's "nothing to run"): a line naming the
    budget, the time used and how to continue when it is spent; None while time is left or with no budget.
    used: read_checked(exp) when the caller has it already (one read: the file may change between two)."""
    if not budget_s:
        return None
    used = read_checked(exp) if used is None else used
    if not is_spent(used[0], budget_s):
        return None
    return (f"{exp}: its time budget of {describe(budget_s)} is spent ({describe(used[0])} used), so nothing was "
            f"started. To continue, raise it: `mmsa resume {exp} --time-budget {longer(budget_s, used[0])}`, or that "
            "--time-budget on the launch command (the time used counts against the new budget).")
