"""Benchmark: coarse + refine (`mmsa refine`, warm-started) vs one search of about as many trial-epochs, on the data
and with the held-out judging of `bench/search_efficiency.py --heldout` (its helpers, imported).

For each seed: a coarse search of --coarse trials over the demo space, then `mmsa refine`'s space with --fine trials
warm-started from it (the final choice is the best trial over both stages, by best val loss); and one search of
about as many trial-epochs (at least --coarse + --fine trials). Each choice is trained as `mmsa train --config EXPORT` would and scored on --heldout
labelled rows carved off before anything runs. Prints trial-epochs and held-out accuracy / macro-F1 per seed.
Usage: python bench/refine_efficiency.py [--seeds 6] [--first-seed 0] [--rows 400] [--heldout 200] [--noise 0.2]
       [--coarse 8] [--fine 8] [--top 3] [--epochs E]       (small: --seeds 2 --rows 400 --heldout 100)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from search_efficiency import heldout_score, heldout_setup, summarize

from model import metrics as M
from search.commands.demo import DEMO_SPACE
from search.selection import results
from search.settings.space import load_spec, parse_spec
from search.tune.tuner import run_search


def best_of(exps: list[Path]) -> Path:
    """The experiment holding the best trial over all of them (by best val loss: search/selection/results.py's rule)."""
    def best(exp):
        return results.best_trial(exp).best[M.VAL_LOSS]
    return min(exps, key=best)


def score(exp: Path, out: Path, heldout: Path) -> dict:
    from search.commands.export import export_best, load_run_config

    export_best(exp, out)
    return heldout_score(load_run_config(out), heldout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--rows", type=int, default=400, help="demo rows for the search (20%% validation)")
    ap.add_argument("--heldout", type=int, default=200, help="labelled held-out rows the final models are scored on")
    ap.add_argument("--noise", type=float, default=0.2, help="label noise of the demo data")
    ap.add_argument("--coarse", type=int, default=8, help="trials of the coarse stage")
    ap.add_argument("--fine", type=int, default=8, help="trials of the refine stage")
    ap.add_argument("--top", type=int, default=3, help="mmsa refine --top")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the demo's)")
    args = ap.parse_args()
    from search.commands.refine import write_refine_space

    log = lambda *a: None  # noqa: E731
    rows, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = heldout_setup(tmp, args.rows, args.heldout, args.noise)
        if args.epochs:
            cfg = cfg.with_overrides({"train.epochs": args.epochs})
        rr = tmp / "rr"
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            search = {**DEMO_SPACE["search"], "seed": seed,
                      "grace_period": min(DEMO_SPACE["search"]["grace_period"], cfg.train.epochs)}
            spec = lambda: parse_spec({"space": DEMO_SPACE["space"], "fixed": cfg.to_dict(), "search": search}, "b")  # noqa: E731
            run_search(spec(), args.coarse, f"coarse{seed}", str(rr), verbose=0, log=log)
            path, _, notes = write_refine_space(str(rr / f"coarse{seed}"), f"fine{seed}", args.top)
            run_search(load_spec(path), args.fine, f"fine{seed}", str(rr), verbose=0, log=log,
                       warm_start=[str(rr / f"coarse{seed}")], extra_meta={"refined_from": str(rr / f"coarse{seed}")})
            two = score(best_of([rr / f"coarse{seed}", rr / f"fine{seed}"]), tmp / f"two{seed}.yaml", tmp / "heldout")
            te2 = summarize(rr / f"coarse{seed}")["trial_epochs"] + summarize(rr / f"fine{seed}")["trial_epochs"]
            # the same budget in trial-epochs: as many trials as coarse + refine's trial-epochs buy at the coarse
            # search's mean trial length (the refine stage's grace period makes its trials longer)
            per_trial = summarize(rr / f"coarse{seed}")["trial_epochs"] / args.coarse
            n_one = max(args.coarse + args.fine, round(te2 / per_trial))
            run_search(spec(), n_one, f"one{seed}", str(rr), verbose=0, log=log)
            one = score(rr / f"one{seed}", tmp / f"one{seed}.yaml", tmp / "heldout")
            te1 = summarize(rr / f"one{seed}")["trial_epochs"]
            rows.append((seed, te2, two, te1, one, notes))
            print(f"seed {seed}: coarse+refine {te2} trial-epochs, held-out acc {two['acc']:.4f} f1 {two['f1']:.4f}; "
                  f"one search of {n_one} trials {te1} trial-epochs, held-out acc {one['acc']:.4f} f1 {one['f1']:.4f}; refine: "
                  + "; ".join(notes[1:]), flush=True)
    print(f"\ndemo data with label noise {args.noise}: {args.rows} rows for the search, {args.heldout} held-out rows; "
          f"tiny models, {cfg.train.epochs} epochs; coarse {args.coarse} + refine {args.fine} trials (top {args.top}) "
          f"vs one search of about as many trial-epochs; total wall {time.time() - t0:.0f} s")
    print("| seed | coarse+refine trial-epochs | held-out acc | macro-F1 | one search trial-epochs | held-out acc | macro-F1 |")
    print("|---|---|---|---|---|---|---|")
    for seed, te2, two, te1, one, _ in rows:
        print(f"| {seed} | {te2} | {two['acc']:.4f} | {two['f1']:.4f} | {te1} | {one['acc']:.4f} | {one['f1']:.4f} |")
    if rows:
        n = len(rows)
        mean = lambda xs: sum(xs) / n  # noqa: E731
        print(f"mean: coarse+refine {mean([r[1] for r in rows]):.1f} trial-epochs, acc {mean([r[2]['acc'] for r in rows]):.4f}; "
              f"one search {mean([r[3] for r in rows]):.1f} trial-epochs, acc {mean([r[4]['acc'] for r in rows]):.4f}; "
              f"coarse+refine better in {sum(r[2]['acc'] > r[4]['acc'] for r in rows)} of {n}, tied in "
              f"{sum(r[2]['acc'] == r[4]['acc'] for r in rows)}; at least as good in "
              f"{sum(r[2]['acc'] >= r[4]['acc'] for r in rows)} of {n} (target: 5 of 6)")


if __name__ == "__main__":
    main()
