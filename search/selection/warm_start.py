"""Coarse to fine: what earlier searches already know, given to Optuna before its first proposal (`--warm-start`),
and configurations it tries first (`--enqueue`, a space file's `enqueue:` list). See docs/search.md, "Coarse to
fine". Everything is read from our own JSON results (search/selection/results.py) and checked here, before Ray starts.

A finished trial of an earlier search becomes an Optuna trial with the new space's distributions:
- COMPLETE (it ran all epochs, or stopped itself early) with its search metric (best val loss) as value;
- PRUNED (ASHA stopped it) with no value; both with their intermediate values {epoch: best val loss so far}, as
  TruthfulOptunaSearch reports live trials. Errored and unfinished trials are skipped.
A trial is used only when it lies inside the new space: every searched value inside its range or among its choices,
and every other setting equal to the new search's fixed one (IGNORED keys aside: where and how fast it ran).
TPE counts these trials among its `n_startup_trials`, so it starts modelling at once instead of sampling at random.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.printable import term

from search.experiment import storage
from search.experiment.layout import read_meta, refuse_confirm_run
from search.selection.opened import Experiment
from search.settings.schema import ERROR, FINISHED, TERMINATED, TRAINING_ITERATION, M
from search.settings.space import SearchSpec, check_point, describe_dist, in_dist  # noqa: F401 - check_point: for callers

# Settings that do not change what a trial learns (paths to the same data, the device, threads, compilation,
# micro-batching: the same update), so trials that differ only in them are still comparable.
IGNORED = frozenset({"data.data_dir", "data.cache_dir", "train.device", "train.compile", "train.num_threads",
                     "train.micro_batch_size"})
WARM_ATTR = "mmsa_warm"  # Optuna user attribute of a warm-start trial: "EXPERIMENT#TRIAL_ID" (added once)
ENQUEUE_ATTR = "mmsa_enqueued"  # Optuna user attribute of an enqueued configuration: its index (enqueued once)


def optuna_name(key: str) -> str:
    """A space key (train.lr) as Ray's OptunaSearch names the parameter (train/lr)."""
    return key.replace(".", "/")


def outside(config: dict, spec: SearchSpec) -> str | None:
    """Why a trial's config lies outside spec's space (a short reason), or None when it lies inside."""
    fixed = spec.fixed.to_dict()
    for sec, keys in fixed.items():
        for name, want in keys.items():
            key = f"{sec}.{name}"
            got = (config.get(sec) or {}).get(name)
            if key in spec.space:
                if not in_dist(spec.space[key], got):
                    return f"{key} {got!r} {describe_dist(spec.space[key])}"
            elif key not in IGNORED and got != want:
                return f"{key} {got!r} where this search fixes {want!r}"
    return None


@dataclass
class WarmTrial:
    source: str  # the experiment it comes from
    trial_id: str
    state: str  # COMPLETE or PRUNED (Optuna's names)
    params: dict  # space key -> value
    value: float | None  # COMPLETE: the search metric; PRUNED: None
    intermediate: dict[int, float] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return f"{self.source}#{self.trial_id}"


def warm_trial(source: str, t, spec: SearchSpec) -> tuple[WarmTrial | None, str]:
    """(the trial as Optuna will see it, "") or (None, why it is skipped)."""
    if t.state != TERMINATED or not t.results:
        return None, "errored" if t.state == ERROR else "not finished"
    why = outside(t.config, spec)
    if why:
        return None, f"outside the space: {why}"
    running = spec.search.objective.running  # the new search's objective: the value its Optuna study compares
    rows = [r for r in t.results if isinstance(r.get(running), (int, float)) and math.isfinite(r[running])]
    if not rows:
        return None, "no finite result"
    inter = {int(r.get(TRAINING_ITERATION, r[M.EPOCH])): float(r[running]) for r in rows}
    last = t.results[-1]
    complete = bool(last.get(FINISHED))
    value = float(last[running]) if complete and last in rows else None
    if complete and value is None:
        return None, "no finite result"
    params = {k: (t.config.get(k.split(".")[0]) or {}).get(k.split(".")[1]) for k in spec.space}
    return WarmTrial(source, t.trial_id, "COMPLETE" if complete else "PRUNED", params, value, inter), ""


def collect(sources: list[str | Experiment], spec: SearchSpec, fingerprint: str, any_data: bool = False,
            log=print) -> tuple[list[WarmTrial], list[dict]]:
    """The warm-start trials of each source experiment that lie inside spec's space, and what to record in the new
    experiment's metadata. Refuses (UserError) a source that is not an experiment, or one on other data unless
    any_data. A source may be an open Experiment (`mmsa refine` has read it already)."""
    from data_pipeline.preprocess import check_same_data

    opened = {s.path: s for s in sources if isinstance(s, Experiment)}
    warm, record, seen = [], [], {}
    for src in sources:  # every name checked before any experiment is read
        exp = storage.normalize(str(src))
        if not storage.is_uri(exp) and not Path(exp).is_dir():
            raise UserError(f"--warm-start {src}: no such directory; name an experiment folder of an earlier "
                            "search, e.g. ray_results/NAME.")
        if exp in seen.values():
            raise UserError(f"--warm-start {src}: named twice.")
        seen[src] = exp
    for src, exp in seen.items():
        source = opened.get(exp) or Experiment(exp)
        try:
            meta = read_meta(source)
        except UserError as e:
            raise UserError(f"--warm-start {src}: {e}") from None
        from search.experiment.lock import holder, read_lease, refuse_held

        refuse_held(f"--warm-start {src}", holder(read_lease(exp)), "its trials are not final yet. Warm-start from it "
                    "when it has finished.")
        refuse_confirm_run(meta, f"--warm-start {src}", "warm-start from the search it confirmed instead.")
        if not any_data:
            check_same_data(f"--warm-start {src}", meta.get("data_fingerprint"), meta.get("data_dir"),
                            spec.fixed.data.data_dir, "its losses say little about this data. Pass "
                            "--warm-start-any-data to use them anyway.", now=fingerprint)
        used, skipped = [], {}
        for t in source.trials:
            w, why = warm_trial(exp, t, spec)
            if w is None:
                kind = why.split(":")[0]
                skipped[kind] = skipped.get(kind, 0) + 1
                if kind == "outside the space":
                    log(term(f"warm start: trial {t.trial_id} of {src} skipped, {why}"))
                continue
            used.append(w)
        warm += used
        states = [w.state for w in used]
        log(f"warm start from {src}: {len(used)} trial(s) given to Optuna ({states.count('COMPLETE')} complete, "
            f"{states.count('PRUNED')} pruned)" + ("; skipped " + ", ".join(f"{n} {k}" for k, n in skipped.items())
                                                   if skipped else ""))
        record.append({"experiment": exp, "name": meta.get("name"), "trials": [w.trial_id for w in used],
                       "skipped": skipped, "data_fingerprint": meta.get("data_fingerprint")})
    return warm, record


# ---- enqueue ----------------------------------------------------------------------------------------------------
def points_from_file(path: str | Path, spec: SearchSpec) -> dict:
    """The searched keys of a run config YAML or a `mmsa export` file (only the keys the file sets)."""
    from model.config import Config, read_yaml

    from search.settings.schema import EXPORT_SECTION as SECTION

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--enqueue {path}: no such file; pass a `mmsa export` file or a run config YAML.")
    d = read_yaml(p)
    if not isinstance(d, dict):
        raise UserError(f"--enqueue {path}: expected a run config (data:/model:/train: sections).")
    run = {k: v for k, v in d.items() if k != SECTION}
    Config.from_dict(run, f"--enqueue {path}")  # unknown keys and wrong values are refused with the file named
    point = {k: run[k.split(".")[0]][k.split(".")[1]] for k in spec.space
             if isinstance(run.get(k.split(".")[0]), dict) and k.split(".")[1] in run[k.split(".")[0]]}
    if not point:
        raise UserError(f"--enqueue {path}: sets none of the searched keys ({', '.join(spec.space)}).")
    return check_point(point, spec, f"--enqueue {path}")


def enqueue_points(spec: SearchSpec, files: list[str] | None) -> list[dict]:
    """The space file's `enqueue:` list (checked when it was read), then each --enqueue file's point."""
    return [*spec.enqueue, *(points_from_file(f, spec) for f in files or [])]
