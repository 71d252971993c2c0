"""Reading a finished or interrupted search from disk: `mmsa status` and `mmsa export`.

Reads Ray Tune's files directly (result.json per trial, the latest experiment_state-*.json for trial states), so it
needs no running Ray and works on a copy of the experiment directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.errors import UserError
from model import metrics as M
from model.config import RunConfig, save_config

from .state_backup import BACKUP_DIR
from .tuner import META, _fs, _is_uri, read_meta

SMALL_FILES = ("result.json", "params.json", "error.txt", META)


def local_copy(exp: str, dest: Path | None = None) -> Path:
    """A local folder with the small files of an experiment stored at a URI (s3://, gs://, file://): results,
    params, errors and Ray's experiment state; checkpoints stay where they are."""
    import tempfile

    import pyarrow.fs as pafs

    fs, root = _fs(exp)
    dest = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="mmsa-exp-"))
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = info.path[len(root):].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.File and "checkpoint_" not in rel and (
                name in SMALL_FILES or (name.startswith("experiment_state-") and name.endswith(".json"))):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src:
                (dest / rel).write_bytes(src.read())
    return dest


def _local(exp_dir: str | Path) -> Path:
    return local_copy(str(exp_dir)) if _is_uri(str(exp_dir)) else Path(exp_dir)


@dataclass
class TrialSummary:
    trial_id: str
    path: Path
    config: dict
    state: str
    results: list[dict] = field(default_factory=list)
    error: str = ""
    failures: int = 0

    @property
    def best(self) -> dict | None:
        return min(self.results, key=lambda r: r[M.VAL_LOSS]) if self.results else None

    @property
    def epochs(self) -> list[int]:
        return [r[M.EPOCH] for r in self.results]


def _states(exp: Path) -> dict[str, dict]:
    # Newest by the start time in the name, as Ray picks it: Ray's final sync rewrites every file, so mtimes tie.
    # A file cut short by a crash falls back to its whole copy in the backup folder, then to the older state.
    names = {p.name for p in [*exp.glob("experiment_state-*.json"), *(exp / BACKUP_DIR).glob("experiment_state-*.json")]}
    for name in sorted(names, reverse=True):
        for f in (exp / name, exp / BACKUP_DIR / name):
            states = _trial_states(f)
            if states is not None:
                return states
    return {}


def _trial_states(f: Path) -> dict[str, dict] | None:
    """Trial id -> state and failure count from one experiment_state file; None if it is missing or not whole."""
    try:
        data = json.loads(f.read_text())["trial_data"]
    except (ValueError, KeyError, OSError):
        return None
    out = {}
    for meta_s, runtime_s in data:
        meta = json.loads(meta_s) if isinstance(meta_s, str) else meta_s
        rt = json.loads(runtime_s) if isinstance(runtime_s, str) else runtime_s
        out[meta["trial_id"]] = {"state": meta.get("status", "?"), "failures": rt.get("num_failures", 0)}
    return out


def _error_reason(trial_dir: Path) -> str:
    f = trial_dir / "error.txt"
    if not f.is_file():
        return ""
    lines = [l.strip() for l in f.read_text(errors="replace").splitlines() if l.strip()]
    # The last line of a traceback names the exception; our own messages put the fix in it.
    return lines[-1][:300] if lines else "error"


def _row(line: str) -> dict | None:
    try:
        return json.loads(line) if line.strip() else None
    except ValueError:
        return None  # a line cut short by a crash while Ray copied the file


def load_trials(exp_dir: str | Path) -> list[TrialSummary]:
    read_meta(exp_dir)  # refuses directories that are not searches
    exp = _local(exp_dir)
    states = _states(exp)
    trials = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").is_file()):
        rows = []
        if (d / "result.json").is_file():
            rows = [r for l in (d / "result.json").read_text().splitlines() if (r := _row(l)) is not None]
        tid = rows[0]["trial_id"] if rows else d.name.removeprefix("trial_")
        st = states.get(tid, {"state": "PENDING", "failures": 0})
        # A trial resumed after a crash may repeat the epoch that was in flight (same numbers: the loop is
        # deterministic per epoch); keep one row per epoch, the latest.
        by_epoch = {r[M.EPOCH]: r for r in rows if M.VAL_LOSS in r}
        trials.append(TrialSummary(tid, d, json.loads((d / "params.json").read_text()), st["state"],
                                   [by_epoch[e] for e in sorted(by_epoch)], _error_reason(d), st["failures"]))
    return trials


def _space_keys(meta: dict) -> list[str]:
    return list(meta["spec"]["space"])


def config_value(config: dict, key: str):
    sec, name = key.split(".")
    return config.get(sec, {}).get(name)


def status_table(exp_dir: str | Path) -> str:
    meta = read_meta(exp_dir)
    trials = load_trials(exp_dir)
    keys = _space_keys(meta)
    head = ["trial", "state", *[k.split(".")[1] for k in keys], "epochs", "best val_loss", "val_acc", "best epoch", "error"]
    rows = []
    for t in sorted(trials, key=lambda t: (t.best is None, t.best[M.VAL_LOSS] if t.best else 0)):
        b = t.best
        vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (config_value(t.config, k) for k in keys)]
        rows.append([t.trial_id, t.state, *vals, str(len(t.results)), f"{b[M.VAL_LOSS]:.4f}" if b else "-",
                     f"{b[M.VAL_ACC]:.4f}" if b else "-", str(b[M.EPOCH]) if b else "-", t.error or ""])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    done = sum(t.state == "TERMINATED" for t in trials)
    summary = f"{meta['name']}: {len(trials)} of {meta['num_samples']} trials started, {done} terminated, " \
              f"{sum(t.state == 'ERROR' for t in trials)} errored; data {meta['data_dir']}"
    return "\n".join([summary, fmt(head), *(fmt(r) for r in rows)])


def best_trial(exp_dir: str | Path) -> TrialSummary:
    usable = [t for t in load_trials(exp_dir) if t.state != "ERROR" and t.results]
    if not usable:
        raise UserError(f"{exp_dir}: no trial has reported a result yet (errored trials are ignored); see `mmsa status {exp_dir}`.")
    return min(usable, key=lambda t: t.best[M.VAL_LOSS])


def export_best(exp_dir: str | Path, out: str | Path) -> dict:
    """Write the best trial's run config plus a `search:` section (best epoch, metrics, checkpoint, data
    fingerprint); `mmsa train --config OUT` trains it for the best epoch count."""
    import pyarrow.fs as pafs

    exp = str(exp_dir).rstrip("/") if _is_uri(str(exp_dir)) else str(Path(exp_dir).resolve())
    meta = read_meta(exp)
    t = best_trial(exp)
    b = t.best
    ck = f"{exp}/{t.path.name}/{b['checkpoint_dir_name']}" if b.get("checkpoint_dir_name") else None
    if ck is not None:  # kept only while it is among the trial's best `keep_checkpoints`
        fs, path = _fs(ck)
        ck = ck if fs.get_file_info(path).type == pafs.FileType.Directory else None
    cfg = RunConfig.from_dict(t.config, source=f"{t.path / 'params.json'}")
    info = {"experiment": exp, "trial_id": t.trial_id, "best_epoch": int(b[M.EPOCH]),
            "metrics": {k: float(b[k]) for k in (M.VAL_LOSS, M.VAL_ACC, M.VAL_F1, M.TRAIN_LOSS)},
            "checkpoint": ck,
            "data_dir": meta["data_dir"], "data_fingerprint": meta["data_fingerprint"]}
    save_config(cfg, out, extras={"search": info})
    return info
