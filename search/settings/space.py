"""Search-space YAML: what Optuna proposes, what stays fixed, and how the search runs. Validated up front.

```yaml
space:                       # sampled per trial; keys are run-config keys (section.key)
  train.lr: {loguniform: [1.0e-6, 1.0e-4]}
  train.batch_size: {choice: [16, 32, 64, 128]}
  model.complexity: {choice: [high, low]}
fixed:                       # the same for every trial (a run config: data/model/train sections)
  train: {epochs: 6}
search:                      # scheduler, searcher and resources (SearchConfig below)
  grace_period: 1
enqueue:                     # optional: configurations Optuna tries first (partial: the rest is sampled)
  - {train.lr: 8.0e-6, train.batch_size: 128, model.complexity: low}
```
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import math
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.printable import term
from model import metrics as M
from model.config import Config, build_section, opt, read_yaml
from search.settings.duration import PATTERN, PATTERN_HELP, parse_duration

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
TOP_KEYS = ("space", "fixed", "search", "enqueue")


@dataclass
class SearchConfig:
    metric: str = opt(M.VAL_LOSS, "what the search optimises: ASHA and Optuna compare trials by its best value so far, "
                      "the best trial, `mmsa confirm`'s choice and `mmsa export` use its best epoch; val_loss is "
                      "minimised, val_acc and val_macro_f1 maximised", choices=tuple(M.OBJECTIVES))
    seed: int = opt(0, "seed of Optuna's sampler", lo=0)
    sampler: str = opt("tpe", "how Optuna proposes trials: tpe (models the results so far) or random (what TPE adds "
                       "is measured against it)", choices=("tpe", "random"))
    grace_period: int = opt(1, "ASHA: epochs every trial runs before it can be stopped", lo=1)
    reduction_factor: int = opt(2, "ASHA: keep the best 1/reduction_factor of trials at each rung", lo=2)
    keep_checkpoints: int = opt(2, "checkpoints kept per trial, the best by val_loss; the two newest are kept too", lo=1)
    max_failures: int = opt(2, "retries of a trial whose process or node died, from its last checkpoint", lo=0)
    cpus_per_trial: float = opt(1.0, "CPU cores reserved per trial", lo=0.0, lo_open=True)
    gpus_per_trial: float = opt(-1.0, "GPUs per trial: -1 = 1 when the cluster has GPUs else 0; fractions pack trials", lo=-1.0, hi=64.0)
    memory_per_trial: float = opt(0.0, "GiB of memory Ray reserves per trial (0: none reserved; a trial needs it on one node)",
                                  lo=0.0, hi=1e6)
    max_concurrent: int = opt(0, "trials at once; 0 = as many as the cluster's GPUs (or CPUs) hold", lo=0)
    checkpoint_mode: str = opt("async", "async: a trial's state is written while the next epoch trains, into its own "
                               "folder; sync: inside Ray's checkpoint at each report (the behaviour before, for "
                               "comparison; also used on URI storage)", choices=("async", "sync"))
    checkpoint_every: int = opt(1, "epochs between full training states (async); a retried or resumed trial repeats "
                                "up to this many epochs, but writes this many times less", lo=1, hi=1000)
    reuse_workers: bool = opt(True, "run the next trial in a finished trial's process (imports and backbones read from "
                              "disk are kept; model, optimizer and seeds are fresh per trial); false: a new process "
                              "per trial")
    keep_best_trials: int = opt(3, "finished trials whose best-epoch weights stay on storage (async); the others "
                                "keep only their results", lo=0, hi=100_000)
    time_budget: str | None = opt(None, "wall time the search may use, e.g. 90m, 2h, 1.5h or seconds (counted across "
                                  "resumes): no trial starts after it, running trials stop at their next epoch with "
                                  "their checkpoint; none by default", pattern=PATTERN, pattern_help=PATTERN_HELP)

    @property
    def objective(self) -> M.Objective:
        return M.objective(self.metric)

    @property
    def budget_s(self) -> float | None:
        return parse_duration(self.time_budget, "search.time_budget (--time-budget)")


@dataclass
class Dist:
    kind: str
    args: list

    def to_tune(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.args)
        return {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}[self.kind](*self.args)


@dataclass
class SearchSpec:
    space: dict[str, Dist]
    fixed: Config
    search: SearchConfig
    source: str = "space"
    enqueue: list[dict] = field(default_factory=list)  # configurations Optuna tries first (search/selection/warm_start.py)

    def param_space(self) -> dict:
        """Ray's config dict: the fixed run config with the sampled keys replaced by distributions."""
        d = self.fixed.to_dict()
        for key, dist in self.space.items():
            sec, name = key.split(".")
            d[sec][name] = dist.to_tune()
        return d


def in_dist(dist: Dist, value) -> bool:
    if dist.kind == "choice":
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dist.args)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    lo, hi = dist.args
    if dist.kind == "randint":
        return float(value).is_integer() and lo <= value < hi
    return lo <= value <= hi


def describe_dist(dist: Dist) -> str:
    if dist.kind == "choice":
        return f"not one of {dist.args}"
    lo, hi = dist.args
    return f"not in [{lo:g}, {hi:g}{')' if dist.kind == 'randint' else ']'}"


def check_point(point: dict, spec: SearchSpec, where: str) -> dict:
    """One configuration to try first: space key -> value, every key searched and every value inside the space."""
    if not isinstance(point, dict) or not point:
        raise UserError(f"{where}: expected a mapping of searched keys to values, e.g. {{train.lr: 8.0e-6}}.")
    out = {}
    for key, value in point.items():
        if key not in spec.space:
            raise UserError(f"{where}: {key} is not searched (the space has {', '.join(spec.space)}); enqueue only "
                            "searched keys, or set it in the fixed: section.")
        if not in_dist(spec.space[key], value):  # the run config's own conversion (YAML reads 1e-5 as a string)
            try:
                sec, field_name = key.split(".", 1)
                converted = getattr(getattr(Config().with_overrides({key: value}), sec), field_name)
            except UserError:
                converted = None
            value = converted if in_dist(spec.space[key], converted) else value
        if not in_dist(spec.space[key], value):
            raise UserError(f"{where}: {key} {value!r} is outside the space ({describe_dist(spec.space[key])}); "
                            "widen the space or change the value.")
        out[key] = value
    return out


def default_space_yaml() -> str:
    return """\
# The lab's search: lr log-uniform in [1e-6, 1e-4], batch size and complexity as the lab tried them.
space:
  train.lr: {loguniform: [1.0e-6, 1.0e-4]}
  train.batch_size: {choice: [16, 32, 64, 128]}
  model.complexity: {choice: [high, low]}
fixed:
  train: {epochs: 6}
search:
  grace_period: 1
  reduction_factor: 2
"""


def _check_value(fixed: Config, key: str, value, where: str) -> None:
    try:
        fixed.with_overrides({key: value}, source=where)
    except UserError as e:
        raise UserError(f"{where}: value {value!r} is not valid for {key} ({e})") from None


def _select_by_search_metric(d: dict, fixed: Config, search: SearchConfig, source: str) -> Config:
    """Every trial's best epoch (the weights it keeps, the epoch count an export names) is by the metric the search
    optimises: train.select_metric follows search.metric. A different one set by hand is refused, except the default
    (val_loss), which a whole run config pasted into fixed: carries without anyone choosing it."""
    train = (d.get("fixed") or {}).get("train") if isinstance(d.get("fixed"), dict) else None
    given = train.get("select_metric") if isinstance(train, dict) else None
    if given not in (None, M.VAL_LOSS, search.metric):
        raise UserError(f"{source}: fixed.train.select_metric {term(str(given))} differs from search.metric "
                        f"{search.metric}; a search picks each trial's best epoch by the metric it optimises. Remove "
                        "train.select_metric (it follows search.metric) or set search.metric instead.")
    if "train.select_metric" in (d.get("space") or {} if isinstance(d.get("space"), dict) else {}):
        raise UserError(f"{source}: space.train.select_metric cannot be searched: trials picked by different metrics "
                        "cannot be compared. Set search.metric instead.")
    return fixed.with_overrides({"train.select_metric": search.metric})


def parse_spec(d: dict, source: str) -> SearchSpec:
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}.")
    unknown = set(d) - set(TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {sorted(str(k)[:40] for k in unknown)}; expected {', '.join(TOP_KEYS)}.")
    fixed = Config.from_dict(d.get("fixed") or {}, f"{source}: fixed")
    search = build_section(SearchConfig, d.get("search") or {}, f"{source}: search")
    fixed = _select_by_search_metric(d, fixed, search, source)
    parse_duration(search.time_budget, f"{source}: search.time_budget")
    space_d = d.get("space") or {}
    if not isinstance(space_d, dict) or not space_d:
        raise UserError(f"{source}: 'space' must map run-config keys (e.g. train.lr) to distributions.")
    space: dict[str, Dist] = {}
    sections = fixed.to_dict()
    for key, spec in space_d.items():
        where = f"{source}: space.{term(str(key))}"  # a key from a file: one line, whatever it holds
        sec, _, name = str(key).partition(".")
        if sec not in sections or name not in sections[sec]:
            raise UserError(f"{where}: unknown key; use section.key with a run-config key, e.g. train.lr.")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise UserError(f"{where}: expected one of {{{', '.join(k + ': ...' for k in DISTRIBUTIONS)}}}.")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise UserError(f"{where}: {kind} needs a non-empty list" + (" of values." if kind == "choice" else " [low, high]."))
        if kind == "choice":
            for v in args:
                _check_value(fixed, key, v, where)
        else:
            if len(args) != 2:
                raise UserError(f"{where}: {kind} needs [low, high].")
            try:
                lo, hi = (float(a) for a in args)
            except (TypeError, ValueError):
                raise UserError(f"{where}: {kind} bounds must be numbers, got {args}.") from None
            if not lo < hi:
                raise UserError(f"{where}: low {args[0]} must be below high {args[1]}.")
            if kind == "loguniform" and lo <= 0:
                raise UserError(f"{where}: loguniform needs low > 0.")
            if kind == "randint":
                lo, hi = int(lo), int(hi)
            args = [lo, hi]
            _check_value(fixed, key, lo, where)
            _check_value(fixed, key, hi - 1 if kind == "randint" else hi, where)
        space[f"{sec}.{name}"] = Dist(kind, args)
    spec = SearchSpec(space, fixed, search, source)
    enqueue = d.get("enqueue") or []
    if not isinstance(enqueue, list):
        raise UserError(f"{source}: enqueue must be a list of configurations, e.g. [{{train.lr: 8.0e-6}}].")
    spec.enqueue = [check_point(p, spec, f"{source}: enqueue[{i}]") for i, p in enumerate(enqueue)]
    return spec


# Spaces shipped with the package, by the name `--space` takes when no file of that name exists.
BUILTIN_SPACES = {"default": None, "recommended": Path(__file__).with_name("recommended_space.yaml")}


def load_spec(path: str | Path | None) -> SearchSpec:
    from data_pipeline.safe_yaml import load_yaml_text

    if path is not None and str(path) in BUILTIN_SPACES and not Path(path).exists():
        builtin = BUILTIN_SPACES[str(path)]
        if builtin is None:
            path = None
        else:
            return parse_spec(load_yaml_text(builtin.read_text(), f"{path} space ({builtin})"), f"{path} space")
    if path is None:
        return parse_spec(load_yaml_text(default_space_yaml(), "default space"), "default space")
    return parse_spec(read_yaml(path), str(path))


def spec_to_dict(spec: SearchSpec) -> dict:
    d = {"space": {k: {d.kind: d.args} for k, d in spec.space.items()}, "fixed": spec.fixed.to_dict(),
         "search": dataclasses.asdict(spec.search)}
    if spec.enqueue:
        d["enqueue"] = [dict(p) for p in spec.enqueue]
    return d
