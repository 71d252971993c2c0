"""`mmsa export`: the best trial as a run config file, and the one rule for training from such a file: it trains
for the best epoch count unless told otherwise."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from model.config import Config, build_section, load_config, opt, save_config

from search.experiment import storage
from search.trial.async_checkpoint import POINTER_FILE, best_name
from data_pipeline.safe_files import UnsafePath
from search.trial import exported
from search.trial.checkpoint_retention import METRICS_FILE
from search.experiment.layout import same_data
from search.selection.opened import Experiment
from search.experiment.lock import running
from search.selection.results import accuracy_intervals, best_of, best_trial, objective_of, warm_stages
from search.settings.schema import CHECKPOINT_DIR_NAME, ENDED, EXPORT_SECTION, M


def search_running(exp_dir: str | Path | Experiment) -> str | None:
    """Who is running the search now (`mmsa search`/`resume` holding its lease), or None."""
    return running(storage.normalize(exp_dir))


SECTION = EXPORT_SECTION


@dataclass
class ExportSection:
    """The `search:` section of an export file, checked like the run config when read back (it may be hand-edited)."""

    experiment: str = opt("", "the search's experiment directory")
    trial_id: str = opt("", "the best trial")
    best_epoch: int = opt(0, "the best trial's best epoch; `mmsa train --config` trains this many epochs", lo=0, hi=1000)
    metric: str = opt(M.VAL_LOSS, "what the search optimised (search.metric): the best trial, its best epoch and "
                      "`mmsa confirm`'s choice are by this metric", choices=tuple(M.OBJECTIVES))
    metrics: dict = opt(None, "the best epoch's validation metrics")
    checkpoint: str | None = opt(None, "the best epoch's weights folder (`mmsa predict --model` reads it), or its "
                                 "checkpoint: a copy in EXP/exported/ that no search deletes")
    data_dir: str = opt("", "the data the search ran on")
    data_fingerprint: str = opt("", "hash of that data; training on other data is refused without --allow-other-data")
    val_acc_interval: list | None = opt(None, "95% bootstrap interval of the best epoch's val accuracy")
    tied: list | None = opt(None, "trials whose val accuracy the validation set cannot tell from this one's")
    selection: str = opt("best trial", "how the configuration was chosen: the search's best trial, or confirmed by "
                         "`mmsa confirm` (best mean over fresh seeds)", choices=("best trial", "confirmed"))
    confirm: dict | None = opt(None, "`mmsa confirm`'s evidence for the chosen configuration (seeds, mean +/- std)")


def export_best(exp_dir: str | Path | Experiment, out: str | Path) -> dict:
    """Write the best trial's run config plus a `search:` section (best epoch, metrics, checkpoint, data
    fingerprint); `mmsa train --config OUT` trains it for the best epoch count."""
    opened = Experiment.open(exp_dir, normalize=True)
    exp, meta, trials = opened.path, opened.meta, opened.trials
    from search.selection.confirm_files import checked_evidence, chosen

    ev, outdated = checked_evidence(opened, trials)  # outdated: why the confirmation is not exported
    if ev is not None and outdated is None:
        return export_confirmed(exp, meta, chosen(ev), ev, out)
    t = best_trial(exp, trials)
    b = t.best
    ck = checkpoint_in_trial(exp, t.path.name, b.get(CHECKPOINT_DIR_NAME))
    best_dir = f"{exp}/{t.path.name}/{best_name(int(b[M.EPOCH]))}"  # checkpoint_mode async: the best weights
    fs, root = storage.filesystem(exp)
    on_fs = lambda loc: f"{root}/{loc[len(exp):].lstrip('/')}"  # noqa: E731 - below exp, never through a link
    whole = lambda loc: storage.is_file(fs, f"{on_fs(loc)}/{METRICS_FILE}", root)  # noqa: E731
    if running(exp) and t.state not in ENDED:  # the trial may be writing it right now (background)
        for _ in range(60):
            if whole(best_dir):
                break
            time.sleep(0.5)
    if whole(best_dir):  # `mmsa predict --model` reads this folder
        ck = best_dir
    elif ck is not None and storage.is_file(fs, f"{on_fs(ck)}/{POINTER_FILE}", root):
        ck = None  # only a pointer to a training state: the best weights are gone (not among keep_best_trials)
    note = None
    if ck is not None:  # a search deletes it sooner or later: a copy stays (search/trial/exported.py)
        copy_name = f"{t.path.name}-{ck.rsplit('/', 1)[-1]}"
        try:
            ck = exported.keep_copy(exp, ck, copy_name)
        except UnsafePath as e:  # planted: a link or a device where a checkpoint's file belongs
            ck, note = None, f"no checkpoint named: {e}"
        except OSError as e:  # (a whole copy made by an earlier export is named above, even once this is gone)
            if not storage.is_dir(fs, on_fs(ck), root):  # gone: pruned, or deleted while it was copied
                ck = None
            else:
                who = running(exp)
                note = (f"the checkpoint could not be copied to {exported.EXPORTED_DIR}/ ({e}); "
                        + ("none is named (the running search may delete it)" if who else
                           f"it is named where it is: a later `mmsa resume {exp}` may delete it"))
                ck = None if who else ck
    # the final run keeps the weights of the epoch this search calls best (a trial from before the key: its default);
    # errors name the file below exp (t.path of an experiment at a URI is a temporary copy, removed by now)
    cfg = Config.from_dict(t.config, source=f"{exp}/{t.path.name}/params.json").with_overrides(
        {"train.select_metric": t.objective.metric})
    info = {"experiment": exp, "trial_id": t.trial_id, "best_epoch": int(b[M.EPOCH]), "metric": t.objective.metric,
            "metrics": {k: float(b[k]) for k in (*M.VAL_METRICS, M.TRAIN_LOSS) if isinstance(b.get(k), (int, float))},
            "checkpoint": ck,
            "data_dir": meta["data_dir"], "data_fingerprint": meta["data_fingerprint"], **interval_info(trials, t.trial_id)}
    save_config(cfg, out, extras={SECTION: info})
    return {**info, **({"outdated_confirmation": outdated} if outdated else {}),
            **({"checkpoint_note": note} if note else {})}


def checkpoint_in_trial(exp: str, trial_dir: str, name) -> str | None:
    """EXP/TRIAL/NAME for the checkpoint folder a trial's result row names, when that name stays inside the trial
    (a hand-made result.json may name `../../..`: export would then pin and point at a folder outside)."""
    from data_pipeline.safe_files import plain_name

    parts = plain_name(name)
    return f"{exp}/{trial_dir}/{'/'.join(parts)}" if parts else None


def better_in_earlier_stage(exp_dir: str | Path | Experiment, value: float) -> str | None:
    """A warm-started search (`mmsa refine`, `--warm-start`) exports its own best trial; where a search it started
    from, on the same data, has a better best value of this search's objective (`value`: the export's), a line
    saying which and how to export it."""
    meta = Experiment.open(exp_dir, normalize=True).meta
    obj = objective_of(meta)
    found = [(obj.key(v), v, b.trial_id, src["experiment"]) for src, smeta, strials, _ in warm_stages(meta)
             if smeta is not None and same_data(meta, smeta)  # not: --warm-start-any-data, or replaced since
             for b in [best_of([dataclasses.replace(t, objective=obj) for t in strials])] if b is not None
             for v in [obj.value(b.best)] if v is not None and obj.key(v) < obj.key(value)]
    if not found:
        return None
    _, loss, tid, src = min(found)
    return (f"an earlier stage has a better trial: {tid} of {src} (best {obj.metric} {loss:.4f}); this "
            f"export is this search's own best. `mmsa export {src}` exports that one (`mmsa report` compares the "
            "stages)")


def export_confirmed(exp: str, meta: dict, c: dict, ev: dict, out: str | Path) -> dict:
    """The configuration `mmsa confirm` chose, for the epoch count of its mean curve; its metrics are the means over
    the confirmation's seeds at that epoch. No checkpoint: no single run is the chosen one."""
    cfg = Config.from_dict(c["config"], source=f"{exp}/confirm.json")
    info = {"experiment": exp, "trial_id": c["trial_id"], "best_epoch": int(c["epochs"]),
            "metric": ev.get("metric", M.VAL_LOSS),
            "metrics": {M.VAL_LOSS: c["val_loss_at_epochs"], M.VAL_ACC: c["val_acc_at_epochs"],
                        M.VAL_F1: c["val_f1_at_epochs"], M.TRAIN_LOSS: c["train_loss_at_epochs"],
                        **{k: c[f"{k}_at_epochs"] for k in (M.VAL_WF1, *M.VAL_RECALL.values())
                           if isinstance(c.get(f"{k}_at_epochs"), float) and c[f"{k}_at_epochs"] == c[f"{k}_at_epochs"]}},
            "checkpoint": None, "data_dir": meta["data_dir"], "data_fingerprint": meta["data_fingerprint"],
            "val_acc_interval": c.get("val_acc_interval"),
            "tied": sorted(o["trial_id"] for o in ev["candidates"] if o.get("tied")),
            "selection": "confirmed",
            "confirm": {"seeds": c.get("seeds"), "best_val_loss_mean": c["best_val_loss_mean"],
                        "best_val_loss_std": c["best_val_loss_std"], "best_val_acc_mean": c["best_val_acc_mean"],
                        "best_val_acc_std": c["best_val_acc_std"], "candidates": len(ev["candidates"]),
                        "trial_epochs": ev["trial_epochs"]}}
    save_config(cfg, out, extras={SECTION: info})
    return info


def interval_info(trials: list, trial_id: str) -> dict:
    ivs = accuracy_intervals(trials)
    if trial_id not in ivs:
        return {}
    return {"val_acc_interval": [round(ivs[trial_id].lo, 6), round(ivs[trial_id].hi, 6)],
            "tied": sorted(k for k, iv in ivs.items() if iv.tied)}


def load_run_config(path: str | Path, overrides: dict | None = None, *, allow_other_data: bool = False,
                    source: str = "command line") -> Config:
    """A run config file, or a `mmsa export` file: that one trains for its best epoch count (unless the overrides
    set train.epochs) and only on the data it was searched on (unless allow_other_data)."""
    cfg, extras = load_config(path, extra_sections=(SECTION,))
    flat = dict(overrides or {})
    exported = dataclasses.asdict(build_section(ExportSection, extras.get(SECTION) or {}, f"{path}: {SECTION}"))
    if exported.get("best_epoch") and "train.epochs" not in flat:
        flat["train.epochs"] = int(exported["best_epoch"])
    if exported.get("metric") and "train.select_metric" not in flat:  # that epoch count is the best by this metric
        flat["train.select_metric"] = exported["metric"]
    cfg = cfg.with_overrides(flat, source=source) if flat else cfg
    if exported.get("data_fingerprint") and not allow_other_data:
        from data_pipeline.preprocess import check_same_data

        check_same_data(f"the search {path} was exported from", exported["data_fingerprint"], exported.get("data_dir"),
                        cfg.data.data_dir, "its hyperparameters and best epoch were chosen for that dataset. Pass "
                        "--allow-other-data to train with them anyway.")
    return cfg
