"""Whole copies of each trial's params.json and result.json, kept by the driver beside Ray's.

Ray writes a trial's results in a driver-local folder and copies it to storage by rewriting each file in place; when
the storage disk fills up mid-copy, params.json and result.json are left empty, and every finished epoch of the trial
would be lost to `status`, `export`, `report` and `resume`. The driver (search/tune/callbacks.py) therefore writes its own
copy of each file after every result, whole or not at all (data_pipeline/atomic.py): a full disk keeps the previous
whole copy. Readers merge the two (results.py), and `mmsa resume` puts whole copies back before Ray reads them.
They are JSON (never pickles), so reading them is safe whoever wrote them.
"""
from __future__ import annotations

import json

import pyarrow.fs as pafs

from data_pipeline.atomic import write_file

from search.settings.schema import M
from search.experiment.storage import parse_json, read_bytes

PARAMS, RESULTS = "params.json", "result.json"
TRIAL_BACKUPS = ".mmsa-state/trials"  # .mmsa-state is search/experiment/state_backup.py's BACKUP_DIR


MAX_TRIAL_FILE = 64 * 2**20  # bytes; a real result.json is about 5 KB per epoch: far over this is planted, and
# parsing it would take many times its size in memory


def parse_rows(data: bytes | None) -> list[dict]:
    """The whole JSON lines of a result file (a line cut short by a crash is dropped); a file over MAX_TRIAL_FILE is
    read as damaged (no rows)."""
    rows = []
    if data is not None and len(data) > MAX_TRIAL_FILE:
        return rows
    for line in (data or b"").decode(errors="replace").splitlines():
        row = parse_json(line) if line.strip() else None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def parse_params(data: bytes | None) -> dict | None:
    params = parse_json(data) if data is None or len(data) <= MAX_TRIAL_FILE else None
    return params if isinstance(params, dict) else None


NUMBERS = (M.VAL_LOSS, M.VAL_ACC, M.VAL_F1, M.TRAIN_LOSS, M.BEST_VAL_LOSS)  # what status/report/export/ASHA read


def _epoch_row(r: dict) -> bool:
    """A row with a whole-number epoch and the metrics every reader uses as numbers (NaN allowed: a diverged
    epoch); anything else (a hand-edited or foreign file) is skipped like a line cut short, never a traceback
    further on."""
    e = r.get(M.EPOCH)
    return (isinstance(e, int) and not isinstance(e, bool) and e >= 1
            and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for k in NUMBERS))


def by_epoch(*row_lists: list[dict]) -> list[dict]:
    """One row per epoch, later lists winning (a resumed trial may repeat the epoch that was in flight)."""
    merged = {}
    for rows in row_lists:
        merged.update((r[M.EPOCH], r) for r in rows if _epoch_row(r))
    return [merged[e] for e in sorted(merged)]


def save_params(fs, exp: str, trial_dir: str, config: dict) -> None:
    d = f"{exp}/{TRIAL_BACKUPS}/{trial_dir}"
    write_file(f"{d}/{PARAMS}", json.dumps(config, default=str).encode(), fs, root=exp)


def save_result(fs, exp: str, trial_dir: str, row: dict) -> None:
    d = f"{exp}/{TRIAL_BACKUPS}/{trial_dir}"
    rows = by_epoch(parse_rows(read_bytes(fs, f"{d}/{RESULTS}", exp)), [row])
    write_file(f"{d}/{RESULTS}", "".join(json.dumps(r, default=str) + "\n" for r in rows).encode(), fs, root=exp)


def backed_up_trials(fs, exp: str) -> list[str]:
    root = f"{exp}/{TRIAL_BACKUPS}"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory)


def read_backup(fs, exp: str, trial_dir: str) -> tuple[dict | None, list[dict]]:
    d = f"{exp}/{TRIAL_BACKUPS}/{trial_dir}"
    return parse_params(read_bytes(fs, f"{d}/{PARAMS}", exp)), parse_rows(read_bytes(fs, f"{d}/{RESULTS}", exp))


def repair_trials(fs, exp: str) -> list[str]:
    """Put whole copies back where a trial's live params.json or result.json is missing, empty, cut or shorter.
    Returns the trial folders repaired."""
    repaired = []
    for trial_dir in backed_up_trials(fs, exp):
        params, rows = read_backup(fs, exp, trial_dir)
        live = f"{exp}/{trial_dir}"
        fixed = False
        if params is not None and parse_params(read_bytes(fs, f"{live}/{PARAMS}", exp)) is None:
            write_file(f"{live}/{PARAMS}", json.dumps(params, default=str).encode(), fs, root=exp)
            fixed = True
        live_rows = parse_rows(read_bytes(fs, f"{live}/{RESULTS}", exp))
        merged = by_epoch(rows, live_rows)
        if len(merged) > len(by_epoch(live_rows)):
            write_file(f"{live}/{RESULTS}", "".join(json.dumps(r, default=str) + "\n" for r in merged).encode(), fs,
                       root=exp)
            fixed = True
        if fixed:
            repaired.append(trial_dir)
    return repaired
