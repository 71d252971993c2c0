"""`mmsa refine EXP`: the second stage of a coarse-to-fine search. Writes a narrower space file from EXP's best
trials (rules below, documented in docs/search.md "Coarse to fine"), then runs it warm-started from EXP.

Rules, from the TOP trials (the `top` best finished trials by the search metric, best val loss):
- a log-uniform key (train.lr): from the smallest top value / MARGIN to the largest x MARGIN;
- a uniform key: the top values' range widened by half of it on each side (at least UNIFORM_MIN_SHARE of the old
  range); a randint key: the same, in whole numbers;
- a choice: the values the top trials used, in the old order;
- every range is clipped to the old one: refining narrows, never widens (when a top value sits on an edge of the old
  range the notes say so; widen it by editing the file);
- the grace period: the first epoch from which the ranking of the top trials by best val loss so far (what ASHA's
  rungs compare) no longer changes up to the last epoch they all reached; clamped to [1, epochs]. Curves that keep
  crossing late mean ASHA must wait longer before it stops anyone.
- fixed settings and the other search settings stay EXP's.
"""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from data_pipeline.errors import UserError

from search.experiment import storage
from search.settings.cli_flags import OPTIONS
from search.experiment.layout import META, refuse_confirm_run
from search.selection.opened import Experiment
from search.selection.results import TrialSummary, config_value, ranked

TOP = OPTIONS["top"].default  # trials whose values span the refined space
MARGIN = 2.0  # log-uniform: x/ this factor around the top trials' values
UNIFORM_MIN_SHARE = 0.1  # uniform/randint: at least this share of the old range on each side
SPACE_SUFFIX = "-space.yaml"  # the refined space goes to STORAGE/NAME-space.yaml, next to EXP


def check_refine_args(top, num_samples) -> None:
    OPTIONS["top"].check(top)
    OPTIONS["num_samples"].check(num_samples)  # None (--dry-run): nothing to check


def default_name(exp: str) -> str:
    """The second stage's name: the experiment folder's name + -refine (the folder's, so a copy refines apart)."""
    return f"{exp.rstrip('/').rsplit('/', 1)[-1]}-refine"


def _outward(x: float, up: bool) -> float:
    """x to 6 significant digits, rounded up or down (never across x)."""
    step = 10.0 ** (math.floor(math.log10(x)) - 5)
    r = float(f"{x:.6g}")
    if up and r < x:
        r = float(f"{r + step:.6g}")
    elif not up and r > x:
        r = float(f"{r - step:.6g}")
    return r


def refine_range(kind: str, old: list, values: list[float]) -> list:
    lo_old, hi_old = old
    lo_v, hi_v = min(values), max(values)
    if kind == "loguniform":  # 6 significant digits, rounded outward: the top values stay inside
        lo, hi = _outward(lo_v / MARGIN, up=False), _outward(hi_v * MARGIN, up=True)
    else:
        pad = max((hi_v - lo_v) / 2, UNIFORM_MIN_SHARE * (hi_old - lo_old))
        lo, hi = lo_v - pad, hi_v + pad
    lo, hi = max(lo, lo_old), min(hi, hi_old)
    if kind == "randint":
        lo, hi = int(math.floor(lo)), int(math.ceil(hi))
        hi = min(max(hi, int(hi_v) + 1), hi_old)  # randint's high is exclusive: keep the top values inside
        return [lo, hi]
    return [lo, hi]


def stable_from(curves: list[list[float]]) -> int | None:
    """The first epoch (1-based) from which the order of the curves no longer changes up to the last epoch all of
    them reached; None with fewer than two curves. Ties keep the order of the curves (stable sort)."""
    if len(curves) < 2:
        return None
    n = min(len(c) for c in curves)
    if n < 1:
        return None
    order = lambda e: sorted(range(len(curves)), key=lambda i: curves[i][e - 1])  # noqa: E731
    final, first = order(n), n
    for e in range(n, 0, -1):
        if order(e) != final:
            break
        first = e
    return first


def grace_from_curves(top: list[TrialSummary], epochs: int, old: int) -> tuple[int, str]:
    curves = [[t.objective.key(v) if isinstance(v, (int, float)) else math.inf
               for r in t.results for v in [r.get(t.objective.running)]] for t in top]
    g = stable_from(curves)
    if g is None:
        return min(max(old, 1), epochs), f"grace_period {old} kept (fewer than two top curves)"
    g = min(max(g, 1), epochs)
    n = min(len(c) for c in curves)
    return g, (f"grace_period {g}: the {top[0].objective.running} of {', '.join(t.trial_id for t in top)} keeps its order from "
               f"epoch {g} to {n}")


def refine_dict(meta: dict, trials: list[TrialSummary], top: int = TOP) -> tuple[dict, list[str]]:
    """The second stage's space file (a dict) and one note per rule applied."""
    from search.settings.space import parse_spec

    spec = meta["spec"]
    parsed = parse_spec(spec, f"{meta.get('name')}: {META} spec")  # a cut or edited file: a message, not a KeyError
    best = ranked(trials, finished_only=True)  # finished trials with a result, best first
    if not best:
        raise UserError(f"{meta.get('name')}: no finished trial with a result to refine from; see `mmsa status`.")
    chosen = best[:top]
    notes = [f"from the top {len(chosen)} of {len(best)} finished trials: {', '.join(t.trial_id for t in chosen)}"]
    space = {}
    for key, d in spec["space"].items():
        kind, args = next(iter(d.items()))
        values = [config_value(t.config, key) for t in chosen]
        if kind == "choice":
            kept = [c for c in args if c in values]
            space[key] = {"choice": kept}
            notes.append(f"{key}: choice {kept} (of {args})")
        else:
            new = refine_range(kind, args, values)
            space[key] = {kind: new}
            edge = [v for v in values if v <= args[0] or v >= args[1] - (1 if kind == "randint" else 0)]
            notes.append(f"{key}: {kind} {new} (top values {', '.join(f'{v:.3g}' for v in values)}; was {args})"
                         + (" - a top value is on the old range's edge: consider widening it" if edge else ""))
    epochs = parsed.fixed.train.epochs
    # The curves are read where they are long: the best of the trials that ran the most epochs (those ASHA kept to
    # the end). A top trial stopped after 2 epochs would cut every comparison off at epoch 2.
    longest = max(len(t.results) for t in best)
    full = [t for t in best if len(t.results) == longest][:top]
    grace, note = grace_from_curves(full if len(full) >= 2 else chosen, epochs, parsed.search.grace_period)
    notes.append(note)
    d = {"space": space, "fixed": spec.get("fixed") or {}, "search": {**(spec.get("search") or {}), "grace_period": grace}}
    return d, notes


def stage_storage(exp: str) -> str:
    """Where the second stage goes: beside the first (its storage folder)."""
    return exp.rstrip("/").rsplit("/", 1)[0] if storage.is_uri(exp) else str(Path(exp).resolve().parent)


def write_refine_space(exp_dir: str | Experiment, name: str | None = None, top: int = TOP,
                       overwrite: bool = False) -> tuple[str, dict, list[str]]:
    """Write the refined space file STORAGE/NAME-space.yaml beside EXP; returns (its path, the dict, the notes)."""
    from data_pipeline.atomic import write_file

    from search.settings.space import parse_spec
    from search.tune.tuner import NAME_RE

    opened = Experiment.open(exp_dir, normalize=True)
    exp, meta = opened.path, opened.meta
    refuse_confirm_run(meta, exp, "refine the search it confirmed.")
    from search.experiment.lock import holder, read_lease, refuse_held

    refuse_held(exp, holder(read_lease(exp)), "refine the search when it has finished (its best trials may still change).")
    name = name or default_name(exp)
    if not NAME_RE.fullmatch(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit).")
    d, notes = refine_dict(meta, opened.trials, top)
    parse_spec(d, "refined space")  # what `mmsa search --space` will accept
    path = storage.join(stage_storage(exp), name + SPACE_SUFFIX)
    fs, p = storage.filesystem(path)
    if storage.is_file(fs, p) and not overwrite:
        raise UserError(f"{path} exists (an earlier `mmsa refine`?): pass --overwrite to replace it, or run it with "
                        f"`mmsa search --space {path} --warm-start {exp} --name {name} --num-samples N`.")
    head = "".join(f"# {n}\n" for n in [f"`mmsa refine {exp}`: the second stage's space (plain YAML: edit it and "
                                         f"pass it to `mmsa search --space`)", *notes])
    write_file(p, (head + yaml.safe_dump(d, sort_keys=False)).encode(), fs)
    return path, d, notes
