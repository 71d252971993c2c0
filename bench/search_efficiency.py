"""Benchmark: ASHA + Optuna vs the lab's method (an exhaustive grid, every epoch) on demo data.

Prints trial-epochs spent, wall time and best val loss for the grid and for ASHA+Optuna with 3 seeds, the demo's
wall time, and the time from a search's start to its first report.
Usage: python bench/search_efficiency.py [--seeds 3] [--num-samples 12] [--rows 400] [--grace G] [--reduction R]
       [--lr-choice] [--skip-demo] [--first-seed 0]
With --heldout N [--noise 0.2] [--top 3] [--confirm-seeds 3]: judges the grid, the ASHA+TPE best trial and
ASHA+TPE + `mmsa confirm` by a final model's accuracy and macro-F1 on N labelled held-out rows (carved off the demo
data before anything runs; label noise makes the validation scores noisy and keeps accuracy below 1).
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
from search.commands.demo import DEMO_SPACE, demo_config, run_demo
from search.selection.results import best_of, load_trials, ranked
from search.settings.space import parse_spec
from search.tune.ray_cluster import capacity, init_ray
from search.experiment.layout import trial_dirname
from search.tune.tuner import run_search, trainable_with

GRID_LR = [1e-4, 1e-3, 1e-2]  # the lab's first grid: one value per decade of the same range


def summarize(exp: Path) -> dict:
    trials = load_trials(exp)
    rows = [r for t in trials for r in t.results]
    return {"trials": len(trials), "trial_epochs": len(rows), "best": best_of(trials).best[M.VAL_LOSS],
            "first_report": min(r["timestamp"] for r in rows)}


def _name(t) -> str:
    c = t.config
    return f"{c['train']['lr']:.2g}, {c['train']['batch_size']}, {c['model']['complexity']} @ {t.best[M.EPOCH]}"


def _key(t) -> tuple:
    return round(t.config["train"]["lr"], 12), t.config["train"]["batch_size"], t.config["model"]["complexity"]


def fate_of(exp: Path, grid_exp: Path) -> str:
    """What the search did with the grid's best configuration: never proposed, stopped by ASHA, or ran out."""
    target = _key(best_of(load_trials(grid_exp)))  # the selection `mmsa export` makes: errors and NaN left out
    runs = [t for t in load_trials(exp) if t.results and _key(t) == target]
    if not runs:
        return "never proposed"
    return ", ".join(f"ran {len(t.results)} epochs ({'finished' if t.results[-1]['finished'] else 'stopped by ASHA'})"
                     for t in runs)


def best_config(exp: Path) -> str:
    return _name(best_of(load_trials(exp)))


def curves(exp: Path) -> list[tuple[str, list[float]]]:
    ts = ranked(load_trials(exp))
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
               tune_config=tune.TuneConfig(max_concurrent_trials=max_conc, reuse_actors=spec.search.reuse_workers,
                                           trial_dirname_creator=trial_dirname),  # the folder names load_trials reads
               run_config=tune.RunConfig(name="grid", storage_path=str(storage), verbose=0)).fit()
    wall = time.time() - t
    (storage / "grid" / "mmsa_search.yaml").write_text("name: grid\nspec: {space: {}}\n")  # lets load_trials read it
    return summarize(storage / "grid"), wall


# ---- --heldout: judge each method by its final model on labelled rows neither search nor selection saw ----------
def carve_heldout(full: Path, search_dir: Path, heldout_dir: Path, n_heldout: int) -> None:
    """Split a labelled demo dataset: the last n_heldout rows of train.txt go to heldout_dir/train.txt (stratified
    by nothing: the row order of the demo data is random), the rest to search_dir; both get copies of the files."""
    import shutil

    lines = (full / "train.txt").read_text().splitlines()
    head, rows = lines[0], lines[1:]
    for d, part in ((search_dir, rows[:-n_heldout]), (heldout_dir, rows[-n_heldout:])):
        shutil.copytree(full / "data", d / "data")
        (d / "train.txt").write_text("\n".join([head, *part]) + "\n")
        shutil.copy(full / "test_without_label.txt", d / "test_without_label.txt")


def heldout_score(cfg, heldout_dir: Path) -> dict:
    """Train cfg (its epochs: the export's epoch count) on the search's train split, as `mmsa train --config EXPORT`
    does, then score the model it keeps (the epoch of lowest val loss) on the held-out rows: accuracy, macro-F1,
    per-row correctness, "pred"/"labels" per row and "scores" (model.metrics.classification_metrics)."""
    import numpy as np
    import torch

    from data_pipeline.labels import LABELS
    from model.run import prepare_split
    from model.train import Trainer, predict_proba

    data = load_train_val(cfg, progress=False)
    trainer = Trainer(cfg, data)
    for _ in trainer.fit():
        pass
    if trainer.best_state is not None:  # what `mmsa train` saves as model.safetensors
        trainer.model.load_state_dict(trainer.best_state)
    held = prepare_split(cfg.with_overrides({"data.data_dir": str(heldout_dir)}), "train", log=lambda *a: None,
                         progress=False)
    pred = predict_proba(trainer.model, held, device="cpu").argmax(1)
    conf = torch.zeros(len(LABELS), len(LABELS), dtype=torch.long)
    for y, p in zip(held.labels, pred):
        conf[y, p] += 1
    correct = (pred == held.labels).astype(float)
    scores = M.classification_metrics(conf)
    return {"acc": float(correct.mean()), "f1": scores[M.VAL_F1], "correct": correct, "epochs": cfg.train.epochs,
            "pred": pred, "labels": np.asarray(held.labels), "scores": scores}


def heldout_setup(tmp: Path, rows: int, heldout: int, noise: float):
    """Demo data with label noise, split into tmp/data (the search's) and tmp/heldout (never seen by search or
    selection), tiny models, the demo config on tmp/data, and Ray started: what every --heldout judging starts from."""
    make_demo_data(tmp / "full", n=rows + heldout, seed=0, label_noise=noise)
    carve_heldout(tmp / "full", tmp / "data", tmp / "heldout", heldout)
    make_tiny_pretrained(tmp / "tiny")
    cfg = demo_config(tmp / "data", tmp / "tiny", cache_dir=tmp / "cache")
    init_ray(None)
    return cfg


def run_heldout(args) -> None:
    from model.config import Config
    from search.commands.confirm import run_confirm
    from search.commands.export import export_best, load_run_config
    from search.selection.stats import compare

    log = lambda *a: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = heldout_setup(tmp, args.rows, args.heldout, args.noise)
        grid_spec = parse_spec({**DEMO_SPACE, "fixed": cfg.with_overrides({"train.patience": 0}).to_dict()}, "grid")
        t0 = time.time()
        grid, grid_wall = run_grid(grid_spec, tmp / "rr")
        gbest = best_of(load_trials(tmp / "rr" / "grid"))
        gcfg = Config.from_dict(gbest.config).with_overrides({"train.epochs": int(gbest.best[M.EPOCH])})
        g = heldout_score(gcfg, tmp / "heldout")
        giv = compare({"grid": g["correct"]})["grid"]
        print(f"grid: {grid['trial_epochs']} trial-epochs, {grid_wall:.0f} s; held-out acc {g['acc']:.4f} "
              f"[{giv.lo:.3f}, {giv.hi:.3f}], macro-F1 {g['f1']:.4f}, epochs {g['epochs']}", flush=True)
        rows = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            spec = parse_spec({"space": DEMO_SPACE["space"], "fixed": cfg.to_dict(),
                               "search": {**DEMO_SPACE["search"], "seed": seed}}, "asha")
            name = f"asha{seed}"
            exp = tmp / "rr" / name
            run_search(spec, args.num_samples, name, str(tmp / "rr"), verbose=0, log=log)
            asha_epochs = summarize(exp)["trial_epochs"]
            export_best(exp, tmp / f"{name}-best.yaml")
            b = heldout_score(load_run_config(tmp / f"{name}-best.yaml"), tmp / "heldout")
            ev = run_confirm(str(exp), args.top, args.confirm_seeds, verbose=0, log=log)
            export_best(exp, tmp / f"{name}-confirmed.yaml")
            c = heldout_score(load_run_config(tmp / f"{name}-confirmed.yaml"), tmp / "heldout")
            rows.append((seed, asha_epochs, ev["trial_epochs"], b, c, ev))
            print(f"seed {seed}: ASHA+TPE {asha_epochs} trial-epochs, best trial held-out acc {b['acc']:.4f} f1 "
                  f"{b['f1']:.4f} ({b['epochs']} epochs); +confirm {ev['trial_epochs']} trial-epochs, chose "
                  f"{ev['chosen']} held-out acc {c['acc']:.4f} f1 {c['f1']:.4f} ({c['epochs']} epochs)", flush=True)
    print(f"\ndemo data with label noise {args.noise}: {args.rows} rows for the search ({args.rows // 5} validation), "
          f"{args.heldout} held-out rows; tiny models; ASHA+TPE {args.num_samples} trials; confirm --top {args.top} "
          f"--seeds {args.confirm_seeds}; total wall {time.time() - t0:.0f} s")
    print("| method | seed | trial-epochs | / grid | held-out acc | held-out macro-F1 | epochs | within grid's interval |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| grid (lab method) | - | {grid['trial_epochs']} | 1.00 | {g['acc']:.4f} [{giv.lo:.3f}, {giv.hi:.3f}] | "
          f"{g['f1']:.4f} | {g['epochs']} | |")
    for seed, ae, ce, b, c, ev in rows:
        for label, r, te in (("ASHA+TPE best trial", b, ae), ("ASHA+TPE + confirm", c, ae + ce)):
            print(f"| {label} | {seed} | {te} | {te / grid['trial_epochs']:.2f} | {r['acc']:.4f} | {r['f1']:.4f} | "
                  f"{r['epochs']} | {'yes' if r['acc'] >= giv.lo else 'no'} |")
    ok = sum(c["acc"] >= giv.lo and (ae + ce) <= 2 / 3 * grid["trial_epochs"] for _, ae, ce, _, c, _ in rows)
    worse = sum(b["acc"] < c["acc"] for _, _, _, b, c, _ in rows)
    print(f"confirm reaches the grid's interval with <= 2/3 of its trial-epochs in {ok} of {len(rows)} seeds; the plain "
          f"best trial is worse on held-out data than the confirmed choice in {worse} of {len(rows)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heldout", type=int, default=0, metavar="N",
                    help="judge grid, ASHA+TPE best trial and ASHA+TPE+confirm by the held-out accuracy and macro-F1 of "
                         "a final model on N labelled rows carved off before the search (0: the search-only benchmark)")
    ap.add_argument("--noise", type=float, default=0.2, help="with --heldout: label noise of the demo data")
    ap.add_argument("--top", type=int, default=3, help="with --heldout: mmsa confirm --top")
    ap.add_argument("--confirm-seeds", type=int, default=3, help="with --heldout: mmsa confirm --seeds")
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
    if args.heldout:
        return run_heldout(args)
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
