"""Helpers for tests that run `mmsa search` / `mmsa resume` as separate processes and break them."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def write_space(path: Path, fixed: dict, space: dict, search: dict) -> Path:
    path.write_text(yaml.safe_dump({"space": space, "fixed": fixed, "search": search}))
    return path


def result_rows(exp: Path) -> int:
    return sum(len((d / "result.json").read_text().splitlines()) for d in exp.glob("trial_*") if (d / "result.json").is_file())


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def wait_rows(proc: subprocess.Popen, exp: Path, rows: int, timeout: float = 240) -> bool:
    """Wait until the experiment has `rows` result rows; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if exp.is_dir() and result_rows(exp) >= rows:
            return True
        time.sleep(0.2)
    raise TimeoutError(f"{exp}: fewer than {rows} results after {timeout} s")


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Signal the process and the Ray processes it started (same process group)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def raw_results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(l) for l in f.read_text().splitlines()] if f.is_file() else []


def without_ray_sigterm_noise(stderr: str) -> str:
    """stderr less one kind of block: Python's "Exception ignored in: ..." printed by a Ray worker that Ray SIGTERMs
    while it runs a finaliser (Ray's sigterm_handler raises SystemExit there, ray/_private/worker.py), forwarded by
    Ray's log monitor with the worker's "(train_trial pid=N)" prefix. It comes from Ray's shutdown of a worker, at
    random; every other traceback stays, for the tests that assert a user never sees one."""
    lines, out, i = stderr.splitlines(keepends=True), [], 0
    while i < len(lines):
        m = re.search(r"\((\w+) pid=(\d+)\)", lines[i]) if "Exception ignored in:" in lines[i] else None
        if m:
            j = i + 1
            while j < len(lines) and m.group(0) in lines[j] and "SystemExit" not in lines[j]:
                j += 1
            block = "".join(lines[i:j + 1])
            if j < len(lines) and "SystemExit" in lines[j] and "sigterm_handler" in block:
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return "".join(out)
