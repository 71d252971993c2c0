"""Where `mmsa confirm` keeps its experiment and evidence inside a search's experiment (search/confirm.py runs it);
read by status, report and export without importing the confirmation itself."""
from __future__ import annotations

import json
from pathlib import Path

from . import storage

CONFIRM_DIR = "confirm"  # EXP/confirm: the confirmation's experiment
EVIDENCE = "confirm.json"  # EXP/confirm.json: what it found


def confirm_location(exp: str) -> str:
    return storage.join(exp, CONFIRM_DIR)


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
