"""What the CLI's train / predict / ablate do, on top of the one Trainer."""
from __future__ import annotations

import csv
import json
import io
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipeline.atomic import write_file
from data_pipeline.dataset import SPLIT_FILES, check_data_dir, read_rows, split_problem, stratified_split
from data_pipeline.errors import UserError
from data_pipeline.labels import LABELS
from data_pipeline.preprocess import Prepared, check_same_data, prepare

from . import run_files as ckpt
from . import metrics as M
from .backbones import check_backbones
from .config import Config, load_config, save_config
from .fusion import FusionClassifier
from .train import Split, Trainer, predict_proba

LAST_CHECKPOINT = "checkpoint"  # inside a run directory: the last epoch's full state, for --resume
# Settings `train --resume` may change: they do not change what the epochs so far computed (how many more epochs,
# when to stop, where and how fast to run, where the cache is). data.data_dir may change when the data's content
# is the same (a moved dataset). Any other difference is refused: the new value would not reach the restored
# optimizer/scheduler state, or would mix two trainings in one history.
RESUME_MAY_CHANGE = ("train.epochs", "train.patience", "train.device", "train.precision", "train.compile",
                     "train.num_threads", "data.data_dir", "data.cache_dir", "data.skip_bad")


def check_out_dir(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """A run directory is written only when new, resumed, or replaced on purpose (--overwrite)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a directory for the run.")
    holds_run = out.is_dir() and any((out / f).exists() for f in (ckpt.WEIGHTS, ckpt.CONFIG, LAST_CHECKPOINT))
    if holds_run and not (resume or overwrite):
        raise UserError(f"--out {out}: already holds a training run. Pass --resume to continue it, --overwrite to "
                        "replace it, or choose another directory.")


def check_resume(cfg: Config, out: Path) -> Config:
    """Refuse to resume with settings that shaped the training so far changed; returns the checkpoint's config."""
    ck = out / LAST_CHECKPOINT
    if not (ck / ckpt.STATE).is_file() or not (ck / ckpt.CONFIG).is_file():
        raise UserError(f"{out}: no checkpoint to resume from ({ck} is missing or incomplete).")
    old, _ = load_config(ck / ckpt.CONFIG)
    before, now = old.to_dict(), cfg.to_dict()
    changed = [f"{sec}.{k}: {before[sec][k]!r} in the checkpoint, {now[sec][k]!r} now"
               for sec in now for k in now[sec] if now[sec][k] != before[sec][k] and f"{sec}.{k}" not in RESUME_MAY_CHANGE]
    if changed:
        raise UserError(f"{out}: cannot resume with other settings than the checkpoint's ({'; '.join(changed)}). "
                        "They shaped the epochs already trained; drop those flags to resume, or train into a new "
                        f"--out. Settings that may change on resume: {', '.join(RESUME_MAY_CHANGE)}.")
    return old


def check_resume_data(out: Path, data: Split, data_dir: str) -> None:
    import json

    f = out / ckpt.DATA
    if not f.is_file():
        return  # a run from before data.json existed: its config's data_dir was compared already
    try:
        recorded = json.loads(f.read_text())
        was = recorded["data_fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{f}: unreadable; it records the data this run trained on. Train into a new --out.") from None
    check_same_data(str(out), was, recorded.get("data_dir"), data_dir, "resuming would mix two datasets in one "
                    "history. Train into a new --out.", now=data.train.fingerprint)


def prepare_split(cfg: Config, split: str, log=print, progress: bool = True) -> Prepared:
    d = cfg.data
    return prepare(d.data_dir, split, cfg.model.text_model, d.max_length, d.image_size, skip_bad=d.skip_bad,
                   cache_dir=d.cache_dir or None, progress=progress, log=log)


def load_train_val(cfg: Config, log=print, progress: bool = True) -> Split:
    full = prepare_split(cfg, "train", log, progress)
    tr, va = stratified_split(np.asarray(full.guids), np.asarray(full.labels), cfg.data.val_fraction, cfg.data.split_seed)
    problem = split_problem(tr, va, cfg.data.val_fraction)
    if problem:  # an empty val set reported val_loss 0.0 and won searches
        raise UserError(f"{Path(cfg.data.data_dir) / SPLIT_FILES['train']}: {len(full)} usable labelled rows; {problem}")
    return Split(full.subset(tr), full.subset(va))


def release_gpu_memory() -> None:
    """Return the finished run's cached GPU memory before the next run in the same process starts."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_history(history: list[dict], out: Path) -> None:
    """metrics.json and metrics.csv of a training run: one row per epoch (model/metrics.py names)."""
    write_file(out / "metrics.json", json.dumps(history, indent=1).encode())
    write_file(out / "metrics.csv", _csv(history, list(M.EPOCH_METRICS)))


def _csv(rows: list[dict], fields: list[str]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


@contextmanager
def writing(out: Path, what: str = "--out"):
    """A write into the run folder that fails for want of space or permission (or a link planted there) ends in one
    `error:` line. torch.save reports a full disk as a bare RuntimeError, hence the check of the free space."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{what} {out}: cannot write ({e.strerror or e}). Free some space or choose a writable "
                        "folder; `mmsa train --resume` continues from the last whole checkpoint.") from None
    except Exception as e:  # noqa: BLE001 - only a full disk is turned into a message; the rest is raised as it was
        free = shutil.disk_usage(out).free if out.is_dir() else None
        if free is None or free > 2**20:
            raise
        raise UserError(f"{what} {out}: the disk is full ({free // 1024} KiB free; {type(e).__name__}). Free some "
                        "space; `mmsa train --resume` continues from the last whole checkpoint.") from None


def train_run(cfg: Config, out: str | Path, *, resume: bool = False, overwrite: bool = False, log=print,
              progress: bool = True, data: Split | None = None) -> list[dict]:
    """Train and write out/: model.safetensors (best val-loss epoch), config.yaml, data.json, metrics.json/.csv,
    curves.png, and checkpoint/ (last epoch's full state, for --resume)."""
    import json

    from .plots import plot_curves

    out = Path(out)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    if resume:
        check_resume(cfg, out)
    if data is None:
        check_data_dir(cfg.data.data_dir)
        check_backbones(cfg.model)
        data = load_train_val(cfg, log, progress)
    if resume:
        check_resume_data(out, data, cfg.data.data_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run directory ({e.strerror}).") from None
    trainer = Trainer(cfg, data)
    if resume:
        try:
            trainer.load_checkpoint(out / LAST_CHECKPOINT)
        except (RuntimeError, KeyError, ValueError) as e:  # tensors of other shapes, a foreign state file
            raise UserError(f"{out / LAST_CHECKPOINT}: does not fit this model ({str(e).splitlines()[0][:200]}); "
                            "train into a new --out.") from None
        log(f"resumed from {out / LAST_CHECKPOINT} after epoch {trainer.epoch}")
    else:
        with writing(out):
            write_file(out / ckpt.DATA, (json.dumps({"data_dir": str(cfg.data.data_dir),
                                                     "data_fingerprint": data.train.fingerprint}) + "\n").encode())
    with writing(out):
        save_config(cfg, out / ckpt.CONFIG)
    log(f"training {cfg.model.modality} on {len(data.train)} samples, validating on {len(data.val)}, device {trainer.device}")
    bar = tqdm(total=len(data.train) * cfg.train.epochs, initial=len(data.train) * trainer.epoch, unit="sample",
               desc=f"train {cfg.model.modality}", disable=not progress, file=sys.stderr, leave=False)
    trainer.on_batch = lambda train, n: bar.update(n) if train else None
    for row in trainer.fit():
        bar.set_postfix({k: f"{row[k]:.4g}" for k in (M.TRAIN_LOSS, M.VAL_LOSS, M.VAL_ACC)})
        log(f"epoch {row[M.EPOCH]}: " + ", ".join(f"{k} {row[k]:.4g}" for k in M.EPOCH_METRICS if k != M.EPOCH))
        with writing(out):
            trainer.save_checkpoint(out / LAST_CHECKPOINT, include_best=True)
            write_history(trainer.history, out)
    bar.close()
    obj = trainer.objective
    best = obj.best_row(trainer.history)  # the epoch whose weights best_state holds
    if trainer.history and best is None:
        raise UserError(f"{out}: {obj.metric} was never a finite number ({trainer.history[-1].get(obj.metric)}); "
                        "no epoch can be the best. Lower train.lr or check the data.")
    if trainer.best_state is None:
        raise UserError(f"{out}: no epoch was trained (train.epochs is {cfg.train.epochs}, checkpoint at epoch {trainer.epoch}).")
    with writing(out):
        ckpt.save_weights(trainer.best_state, out / ckpt.WEIGHTS)
        plot_curves(trainer.history, out / "curves.png", obj, title=f"{cfg.model.modality} ({cfg.model.complexity}, lr {cfg.train.lr:g}, batch {cfg.train.batch_size})")
    log(f"best epoch {best[M.EPOCH]} (by {obj.metric}): val_loss {best[M.VAL_LOSS]:.4f}, val_acc {best[M.VAL_ACC]:.4f}; model in {out / ckpt.WEIGHTS}")
    return trainer.history


def load_trained(run_dir: str | Path) -> tuple[FusionClassifier, Config]:
    run = Path(run_dir)
    if not (run / ckpt.WEIGHTS).is_file() or not (run / ckpt.CONFIG).is_file():
        raise UserError(f"{run}: not a trained model directory (needs {ckpt.WEIGHTS} and {ckpt.CONFIG}; made by `mmsa train`).")
    cfg, _ = load_config(run / ckpt.CONFIG)
    weights = ckpt.load_weights(run / ckpt.WEIGHTS)  # a cut or foreign file is refused before the backbones load
    check_backbones(cfg.model)
    model = FusionClassifier(cfg.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # another complexity, modality or backbone than config.yaml says
        raise UserError(f"{run / ckpt.WEIGHTS}: does not fit the model {run / ckpt.CONFIG} describes (complexity "
                        f"{cfg.model.complexity}, modality {cfg.model.modality}, {cfg.model.image_arch}): "
                        f"{str(e).splitlines()[0][:200]} ... The two files come from different runs; keep a run "
                        "directory's files together.") from None
    return model, cfg


def check_out_file(out: Path, overwrite: bool, flag: str = "--out") -> None:
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a directory; give a file name, e.g. {out / 'predictions.txt'}.")
    if not out.parent.is_dir():
        raise UserError(f"{flag} {out}: folder {out.parent} does not exist; create it first.")
    if out.exists() and not overwrite:
        raise UserError(f"{flag} {out}: already exists. Pass --overwrite to replace it, or choose another file.")


def predict_run(run_dir: str | Path, data_dir: str | Path | None, out: str | Path | None = None, probs: bool = False,
                log=print, progress: bool = True, skip_bad: bool | None = None, overwrite: bool = False) -> Path:
    """Write predictions.txt (guid,tag in the test file's order) and optionally probabilities.csv."""
    out = Path(out) if out else Path(run_dir) / "predictions.txt"
    if Path(run_dir).is_dir():
        check_out_file(out, overwrite)
        if probs:
            check_out_file(out.with_name("probabilities.csv"), overwrite)
    model, cfg = load_trained(run_dir)
    flat = {} if data_dir is None else {"data.data_dir": str(data_dir)}
    if skip_bad is not None:
        flat["data.skip_bad"] = skip_bad
    if flat:
        cfg = cfg.with_overrides(flat, source="command line")
    test = prepare_split(cfg, "test", log, progress)
    p = predict_proba(model, test, batch_size=cfg.train.batch_size, device=cfg.train.device, precision=cfg.train.precision)
    by_guid = {g: i for i, g in enumerate(np.asarray(test.guids))}
    rows = [r.guid for r in read_rows(cfg.data.data_dir, "test")]
    lines = ["guid,tag"]
    for g in rows:  # skipped (bad) samples have no prediction: the file says so instead of dropping the row
        lines.append(f"{g},{LABELS[int(p[by_guid[g]].argmax())]}" if g in by_guid else f"{g},null")
    with writing(out.parent):
        write_file(out, ("\n".join(lines) + "\n").encode())
        if probs:
            write_file(out.with_name("probabilities.csv"), ("guid," + ",".join(LABELS) + "\n" + "".join(
                g + "," + ",".join(f"{x:.6f}" for x in p[by_guid[g]]) + "\n" for g in rows if g in by_guid)).encode())
    log(f"wrote {len(by_guid)} predictions to {out}")
    return out


def ablate_run(cfg: Config, out: str | Path, log=print, progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Train text-only, image-only and fusion with the same settings; write ablation.csv/.md and ablation.png."""
    from .plots import plot_ablation

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a directory for the ablation.")
    for modality in ("text", "image", "fusion"):
        check_out_dir(out / modality, overwrite=overwrite)
    if (out / "ablation.md").exists() and not overwrite:
        raise UserError(f"--out {out}: already holds an ablation. Pass --overwrite to replace it, or choose another directory.")
    check_data_dir(cfg.data.data_dir)
    check_backbones(cfg.with_overrides({"model.modality": "fusion"}).model)  # all three runs' files, before any
    data = load_train_val(cfg, log, progress)
    results, histories = [], {}
    for modality in ("text", "image", "fusion"):
        sub = cfg.with_overrides({"model.modality": modality})
        histories[modality] = train_run(sub, out / modality, log=log, progress=progress, data=data, overwrite=overwrite)
        release_gpu_memory()  # the lab ran out of GPU memory when runs followed each other in one process
        # the epoch whose weights train_run kept (train.select_metric); train_run refused a run with none finite
        best = M.objective(sub.train.select_metric).best_row(histories[modality])
        results.append({"modality": modality, M.BEST_EPOCH: best[M.EPOCH], M.VAL_LOSS: best[M.VAL_LOSS],
                        M.VAL_ACC: best[M.VAL_ACC], M.VAL_F1: best[M.VAL_F1]})
    md = ["| modality | best epoch | val loss | val acc | val macro-F1 |", "|---|---|---|---|---|"]
    md += [f"| {r['modality']} | {r[M.BEST_EPOCH]} | {r[M.VAL_LOSS]:.4f} | {r[M.VAL_ACC]:.4f} | {r[M.VAL_F1]:.4f} |" for r in results]
    with writing(out):
        write_file(out / "ablation.csv", _csv(results, list(results[0])))
        write_file(out / "ablation.md", ("\n".join(md) + "\n").encode())
        plot_ablation(histories, out / "ablation.png")
    log("\n".join(md))
    return results
