"""Durations a user writes (search.time_budget, --time-budget): 90m, 2h, 1.5h, 45s or plain seconds."""
from __future__ import annotations

import math
import re

from data_pipeline.errors import UserError

UNITS = {"s": 1, "m": 60, "h": 3600}
PATTERN = r"\s*\d+(\.\d+)?\s*[smh]?\s*"
PATTERN_HELP = "a duration such as 90m, 2h, 1.5h, 45s or plain seconds"
MAX_S = 365 * 86400  # a year: anything longer is a typo (2000h for 200h), not a budget


def parse_duration(value, where: str) -> float | None:
    """Seconds (None: no duration given); one `error:` line naming `where` for anything else."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if isinstance(value, bool) or not re.fullmatch(PATTERN, text):
        raise UserError(f"{where}: {str(value)[:40]!r} is not {PATTERN_HELP}.")
    unit = text[-1] if text[-1] in UNITS else "s"
    seconds = float(text.rstrip("smh").strip()) * UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_S:
        raise UserError(f"{where}: {str(value)[:40]!r} must be more than 0 and at most {MAX_S // 86400} days.")
    return seconds


def describe(seconds: float) -> str:
    """A duration as a person reads it: 1h 30m, 45m 10s, 12s."""
    s = max(0, round(seconds))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return " ".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def longer(budget_s: float, used_s: float = 0.0) -> str:
    """A budget to suggest once one is spent, as a person writes it: twice it, or the time used plus it when more was
    used (a budget raised on a running search); never over MAX_S, which parse_duration would refuse."""
    s = min(max(2 * budget_s, used_s + budget_s), MAX_S)
    return f"{math.floor(s / 3600)}h" if s >= 3600 else f"{max(1, math.floor(s / 60))}m"
