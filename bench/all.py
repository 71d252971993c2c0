"""Rerun every CPU benchmark and print each headline ratio next to the value docs/benchmarks.md records and the
target, so anyone can check the docs in minutes.

Usage: python bench/all.py [--quick | --smoke] [--json PATH]
  --quick: fewer repeats (a few minutes on 2 cores); --smoke: seconds, demo data, checks the scripts only.
Not rerun here: bench/search_efficiency.py (tens of minutes) and bench/gpu_step.py (needs a GPU); their documented
numbers are listed with the commit that measured them.
The documented values are the `<!-- headline KEY: VALUE -->` marks in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics

from common import ROOT, machine

BENCHES = ("data_pipeline", "train_loop")  # the CPU benches; each has run(mode) -> headlines

DOCS = ROOT / "docs" / "benchmarks.md"
MARK = re.compile(r"<!--\s*headline\s+([\w.]+):\s*([-\d.]+)\s*(?:measured at (\S+))?\s*-->")


def load(name: str):
    # By path and under another name: bench/data_pipeline.py would shadow the data_pipeline package.
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented() -> dict[str, tuple[float, str | None]]:
    return {m[1]: (float(m[2]), m[3]) for m in MARK.finditer(DOCS.read_text())}


def verdict(value: float, target) -> str:
    if target is None:
        return "no target"
    op, bound = target
    return "met" if (value >= bound if op == ">=" else value <= bound) else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", help="also write the headlines here")
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    head = machine()
    print(head, f"; mode {mode}")
    rows = []
    for name in BENCHES:
        print(f"\n==== bench/{name}.py ({mode}) ====")
        rows += load(name).run(mode)
    docs = documented()
    print(f"\n==== headline ratios ({mode}; median [min-max] of repeats) vs docs/benchmarks.md ====")
    print(head)
    for r in rows:
        m = statistics.median(r["values"])
        doc, at = docs.get(r["key"], (None, None))
        target = "none" if r["target"] is None else f"{r['target'][0]} {r['target'][1]:g}"
        doc_s = "not documented" if doc is None else f"{doc:g}" + (f" (measured at {at})" if at else "")
        print(f"{r['key']:34s} measured {m:{r['fmt']}} [{min(r['values']):{r['fmt']}}-{max(r['values']):{r['fmt']}}]"
              f"  documented {doc_s}  target {target}: {verdict(m, r['target'])}")
        r.update(median=m, documented=doc)
    for key, (doc, at) in docs.items():
        if key not in {r["key"] for r in rows}:
            print(f"{key:34s} not rerun here         documented {doc:g}" + (f" (measured at {at})" if at else ""))
    if mode == "smoke":
        print("(smoke mode: demo data and tiny models; these numbers say nothing about the docs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": head, "mode": mode, "headlines": rows}, f, indent=1)


if __name__ == "__main__":
    main()
