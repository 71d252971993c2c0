"""Benchmark: ASHA + Optuna vs the lab's method (an exhaustive grid, every epoch) on demo data.

Prints trial-epochs spent, wall time and best val loss for the grid and for ASHA+Optuna with 3 seeds, the demo's
wall time, and the time from a search's start to its first report.
Usage: python bench/search_efficiency.py [--seeds 3] [--num-samples 12] [--rows 400] [--grace G] [--reduction R]
       [--lr-choice] [--skip-demo] [--first-seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from data_pipeline.demo_data import make_demo_data
from model import metrics as M
from model.pretrained import make_tiny_pretrained
from model.run import load_train_val
from search.demo import DEMO_SPACE, demo_config, run_demo
from search.results import load_trials
from search.space import parse_spec
from search.ray_cluster import capacity, init_ray
from search.tuner import run_search, trainable_with

GRID_LR = [1e-4, 1e-3, 1e-2]  # the lab's first grid: one value per decade of the same range


def summarize(exp: Path) -> dict:
    trials = load_trials(exp)
    rows = [r for t in trials for r in t.results]
    return {"trials": len(trials), "trial_epochs": len(rows), "best": min(r[M.VAL_LOSS] for r in rows),
            "first_report": min(r["timestamp"] for r in rows)}


def _name(t) -> str:
    c = t.config
    return f"{c['train']['lr']:.2g}, {c['train']['batch_size']}, {c['model']['complexity']} @ {t.best[M.EPOCH]}"


def _key(t) -> tuple:
    return round(t.config["train"]["lr"], 12), t.config["train"]["batch_size"], t.config["model"]["complexity"]


def fate_of(exp: Path, grid_exp: Path) -> str:
    """What the search did with the grid's best configuration: never proposed, stopped by ASHA, or ran out."""
    target = _key(min((t for t in load_trials(grid_exp) if t.results), key=lambda t: t.best[M.VAL_LOSS]))
    runs = [t for t in load_trials(exp) if t.results and _key(t) == target]
    if not runs:
        return "never proposed"
    return ", ".join(f"ran {len(t.results)} epochs ({'finished' if t.results[-1]['finished'] else 'stopped by ASHA'})"
                     for t in runs)


def best_config(exp: Path) -> str:
    return _name(min((t for t in load_trials(exp) if t.results), key=lambda t: t.best[M.VAL_LOSS]))


def curves(exp: Path) -> list[tuple[str, list[float]]]:
    ts = sorted((t for t in load_trials(exp) if t.results), key=lambda t: t.best[M.VAL_LOSS])
    return [(_name(t), [r[M.VAL_LOSS] for r in t.results]) for t in ts]


def run_grid(spec, storage: Path) -> tuple[dict, float]:
    from ray import tune

    data = load_train_val(spec.fixed, progress=False)
    resources, max_conc = capacity(spec)
    ps = spec.param_space()
    ps["train"]["lr"] = tune.grid_search(GRID_LR)
    ps["train"]["batch_size"] = tune.grid_search(spec.space["train.batch_size"].args)
    ps["model"]["complexity"] = tune.grid_search(spec.space["model.complexity"].args)
    t = time.time()
    tune.Tuner(trainable_with(data, resources), param_space=ps,
               tune_config=tune.TuneConfig(max_concurrent_trials=max_conc),
               run_config=tune.RunConfig(name="grid", storage_path=str(storage), verbose=0)).fit()
    wall = time.time() - t
    (storage / "grid" / "mmsa_search.yaml").write_text("name: grid\n")  # lets load_trials read it
    return summarize(storage / "grid"), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--num-samples", type=int, default=12)
    ap.add_argument("--rows", type=int, default=400, help="demo rows (20%% validation); more rows, less noisy val loss")
    ap.add_argument("--skip-demo", action="store_true", help="do not time `mmsa demo`")
    ap.add_argument("--grace", type=int, default=None, help="ASHA grace period (default: the demo space's)")
    ap.add_argument("--reduction", type=int, default=None, help="ASHA reduction factor (default: the demo space's)")
    ap.add_argument("--lr-choice", action="store_true",
                    help="search lr over the grid's values (the very same space as the grid) instead of log-uniform")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_demo_data(tmp / "data", n=args.rows, seed=0)
        make_tiny_pretrained(tmp / "tiny")
        cfg = demo_config(tmp / "data", tmp / "tiny", cache_dir=tmp / "cache")
        init_ray(None)
        grid_spec = parse_spec({**DEMO_SPACE, "fixed": cfg.with_overrides({"train.patience": 0}).to_dict()}, "grid")
        grid, grid_wall = run_grid(grid_spec, tmp / "rr")
        grid_curves = curves(tmp / "rr" / "grid")
        rows = []
        space = dict(DEMO_SPACE["space"], **({"train.lr": {"choice": GRID_LR}} if args.lr_choice else {}))
        asha = {**({"grace_period": args.grace} if args.grace else {}),
                **({"reduction_factor": args.reduction} if args.reduction else {})}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            search = {**DEMO_SPACE["search"], "seed": seed, **asha}
            spec = parse_spec({"space": space, "fixed": cfg.to_dict(), "search": search}, "asha")
            t = time.time()
            run_search(spec, args.num_samples, f"asha{seed}", str(tmp / "rr"), verbose=0, log=lambda *a: None)
            wall = time.time() - t
            s = summarize(tmp / "rr" / f"asha{seed}")
            s["best_config"] = best_config(tmp / "rr" / f"asha{seed}")
            s["fate"] = fate_of(tmp / "rr" / f"asha{seed}", tmp / "rr" / "grid")
            rows.append((seed, s, wall, s["first_report"] - t))
        demo_wall = None
        if not args.skip_demo:
            t = time.time()
            run_demo(tmp / "demo", quiet=True, log=lambda *a: None)
            demo_wall = time.time() - t
    g = grid
    print(f"demo data ({args.rows} rows, {args.rows // 5} for validation), tiny models, 2 CPU cores; grid = lr {GRID_LR} x batch x complexity, every epoch; "
          f"ASHA grace period {args.grace or DEMO_SPACE['search']['grace_period']}, reduction factor "
          f"{args.reduction or DEMO_SPACE['search']['reduction_factor']}, {args.num_samples} trials, lr "
          f"{'choice of the grid values' if args.lr_choice else 'log-uniform'}")
    print(f"{'method':<22}{'trials':>7}{'trial-epochs':>14}{'wall s':>9}{'best val_loss':>15}{'vs grid':>9}{'epochs/grid':>13}")
    print(f"{'grid (lab method)':<22}{g['trials']:>7}{g['trial_epochs']:>14}{grid_wall:>9.0f}{g['best']:>15.4f}{'':>9}{'':>13}")
    for seed, s, wall, _ in rows:
        print(f"{'ASHA+Optuna seed ' + str(seed):<22}{s['trials']:>7}{s['trial_epochs']:>14}{wall:>9.0f}{s['best']:>15.4f}"
              f"{(s['best'] / g['best'] - 1) * 100:>8.1f}%{s['trial_epochs'] / g['trial_epochs']:>13.2f}")
    print("target: best val_loss within 1% of the grid's with at most 1/3 of its trial-epochs")
    print("best configuration (lr, batch, complexity) @ epoch: grid " + grid_curves[0][0] + "; "
          + "; ".join(f"seed {seed} {s['best_config']}" for seed, s, _, _ in rows))
    print("the grid's best configuration in each search: " + "; ".join(f"seed {seed} {s['fate']}" for seed, s, _, _ in rows))
    print("grid learning curves, best first (val_loss per epoch; ASHA compares at epochs grace x rf^k):")
    for name, losses in grid_curves[:6]:
        print(f"  {name:<28}" + " ".join(f"{v:.3f}" for v in losses))
    print("time from search start to first report: " + ", ".join(f"{r[3]:.1f} s" for r in rows))
    if demo_wall is not None:
        print(f"mmsa demo wall time (search + export + final training + predictions): {demo_wall:.0f} s")


if __name__ == "__main__":
    main()
