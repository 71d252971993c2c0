"""Benchmark: what a search costs beyond training, at the lab's real size (BERT-base + ResNet-50, random weights).

Runs the same real search (Ray, the real trainable, Optuna + ASHA) once per mode on a small data slice:
- `sync`: the behaviour before issue 14 (the whole state inside Ray's checkpoint at each report, best weights copied
  to host memory, a fresh worker process per trial);
- `async`: checkpoints written in the background (search/trial/async_checkpoint.py), a fresh process per trial;
- `warm`: async, and warm workers (search.reuse_workers: a trial runs in the previous trial's process, which kept
  its imports and backbones), the default.
Per trial it prints: seconds from the trial's start (process start for a process's first trial, the trainable's
call on a warm worker) to its first batch, and the seconds from the previous trial's last report on the same worker
(Ray's reset included); per epoch the seconds the trainable blocked outside the training/validation passes, bytes
written to storage per epoch, goodput (time in the passes / trial wall time); and the experiment's bytes at the end.

The overhead of an epoch is reported with the next epoch's row, so a trial's last epoch has none measured.
Usage (from the repository root): python -m bench.search_overhead [--size base|tiny] [--rows 48] [--trials 4] [--epochs 3] [--image-size 64]
       [--max-length 32] [--modes sync,async,warm]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
os.environ["PYTHONPATH"] = str(ROOT)  # Ray's workers import this checkout (not bench/data_pipeline.py, not another)
from data_pipeline.demo_data import make_demo_data
from model.pretrained import make_tiny_pretrained
from search.trial.async_checkpoint import BYTES_PREV, FIRST_BATCH_S, OVERHEAD_S, PASS_S
from search.selection.results import load_trials
from search.settings.schema import REPORTED_AT, WORKER_PID, WORKER_TRIAL
from search.settings.space import parse_spec
from search.tune.tuner import run_search


def du(path: Path) -> int:
    """Bytes on disk, hard links counted once."""
    seen = {}
    for f in Path(path).rglob("*"):
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def leftovers(path: Path) -> int:
    """Hidden temporary folders of writes that never finished."""
    return len([p for p in Path(path).glob("trial_*/.*.tmp*")])


def summarize(exp: Path) -> list[dict]:
    out = []
    for t in load_trials(exp):
        rows = t.results
        if not rows:
            continue
        start = rows[0][REPORTED_AT] - rows[0][PASS_S] - rows[0][FIRST_BATCH_S]
        wall = rows[-1][REPORTED_AT] - start
        over = [r[OVERHEAD_S] for r in rows[1:]]
        written = [r[BYTES_PREV] for r in rows[1:]]
        out.append({"trial": t.trial_id, "epochs": len(rows), "first_batch_s": rows[0][FIRST_BATCH_S],
                    "overhead_s": over, "bytes": written, "goodput": sum(r[PASS_S] for r in rows) / wall,
                    "pass_s": statistics.mean(r[PASS_S] for r in rows), "pid": rows[0].get(WORKER_PID),
                    "nth": rows[0].get(WORKER_TRIAL, 1), "first_batch_at": rows[0][REPORTED_AT] - rows[0][PASS_S],
                    "last_report": rows[-1][REPORTED_AT]})
    out.sort(key=lambda t: t["first_batch_at"])
    for t in out:  # the worker's idle time between its previous trial's last report and this trial's first batch
        before = [p for p in out if p["pid"] == t["pid"] and p["nth"] == t["nth"] - 1]
        t["gap_s"] = t["first_batch_at"] - before[0]["last_report"] if before and t["nth"] > 1 else math.nan
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("tiny", "base"), default="base")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--modes", default="sync,async,warm", help="comma-separated: sync, async, warm (see above)")
    ap.add_argument("--pretrained", help="folder of make-tiny-pretrained --size SIZE output (made when absent)")
    ap.add_argument("--keep-best-trials", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mmsa-overhead-"))
    data = work / "data"
    make_demo_data(data, n=args.rows, seed=0)
    pre = Path(args.pretrained) if args.pretrained else work / "pretrained"
    names = {"tiny": ("bert-tiny", "resnet10.safetensors", "resnet10"),
             "base": ("bert-base-random", "resnet50-random.safetensors", "resnet50")}[args.size]
    if not (pre / names[0]).is_dir():
        make_tiny_pretrained(pre, size=args.size)
    results = {}
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in ("sync", "async", "warm")]
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from sync, async, warm")
    for mode in modes:
        spec = parse_spec({
            "space": {"train.lr": {"loguniform": [1e-5, 1e-3]}},
            "fixed": {"data": {"data_dir": str(data), "image_size": args.image_size, "max_length": args.max_length},
                      "model": {"text_model": str(pre / names[0]), "image_weights": str(pre / names[1]),
                                "image_arch": names[2]},
                      "train": {"epochs": args.epochs, "batch_size": 16, "device": "cpu", "num_threads": 1}},
            "search": {"grace_period": 1, "reduction_factor": 2, "checkpoint_mode": "sync" if mode == "sync" else "async",
                       "reuse_workers": mode == "warm", "max_concurrent": 1,
                       "cpus_per_trial": 1, "keep_best_trials": args.keep_best_trials},
        }, "bench")
        storage = work / f"results-{mode}"
        run_search(spec, args.trials, f"overhead-{mode}", str(storage), verbose=0, log=lambda *a: None)
        exp = storage / f"overhead-{mode}"
        results[mode] = (summarize(exp), du(exp), leftovers(exp))
        import ray

        ray.shutdown()
    print(f"size {args.size}, {args.rows} rows, image {args.image_size} px, {args.max_length} tokens, "
          f"{args.trials} trials x <= {args.epochs} epochs, 1 trial at a time, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    for mode, (trials, size, left) in results.items():
        print(f"\n== {mode} ==")
        print("trial      worker trial  epochs  start->1st batch s  gap after previous s  blocking s/epoch (each)  "
              "     MB written/epoch  pass s  goodput")
        for t in trials:
            over = " ".join(f"{x:.2f}" for x in t["overhead_s"]) or "-"
            mb = statistics.mean(t["bytes"]) / 2**20 if t["bytes"] else math.nan
            print(f"{t['trial']:<10} {t['nth']:>12}  {t['epochs']:>6}  {t['first_batch_s']:>18.2f}  {t['gap_s']:>20.2f}  "
                  f"{over:<28}  {mb:>16.0f}  {t['pass_s']:>6.1f}  {t['goodput']:>6.1%}")
        later = [t["first_batch_s"] for t in trials if t["nth"] > 1]
        if later:
            print(f"trials after the first on a worker: start->1st batch {statistics.median(later):.2f} s median "
                  f"[{min(later):.2f}-{max(later):.2f}] (target <= 1.5 s)")
        allo = [x for t in trials for x in t["overhead_s"]]
        print(f"mean blocking per epoch {statistics.mean(allo) if allo else math.nan:.2f} s, max "
              f"{max(allo) if allo else math.nan:.2f} s; experiment at the end: {size / 2**20:.0f} MiB; unfinished "
              f"temporary folders: {left}")


if __name__ == "__main__":
    main()
