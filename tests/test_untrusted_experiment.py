"""An experiment folder is untrusted input (docs/reliability.md, Security): a generated table of planted files x every
command that reads or writes an experiment. Each plant is one small function (a row of PLANTS); B's and C's cases
(forged evidence, damaged leases, names with newlines) are added as rows the same way.

Each case runs on a fresh copy of one small real finished search, with a 'victim' folder beside it (an outside
secret file, an outside folder) and asserts:
  - nothing outside the experiment changed (the victim folder hashes the same before and after),
  - no content of the outside secret was printed or written into the experiment,
  - no code ran (a forged pickle whose unpickling would create a marker file),
  - the command worked, or ended with exactly one `error:` line and no traceback.
Commands that start Ray (resume, confirm, warm start) run only with the plants they are refused on before Ray starts
(cheap), plus a few where the full run is what is tested (RAY_RUNS)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from search.cli import main

SECRET = "SECRET-MARKER-7f3a9c"  # in every outside file: must never be printed or copied in
CODE_MARKER = "code-ran.marker"  # a forged pickle creates this beside the experiment when unpickled


# ---- the experiment, built once -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_cfg, ray_local):
    """A real finished search: 2 trials of 2 epochs on the demo data with tiny models."""
    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    root = tmp_path_factory.mktemp("untrusted")
    spec = parse_spec({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                       "fixed": demo_cfg.with_overrides({"epochs": 2}).to_dict(), "search": {"grace_period": 2}}, "t")
    run_search(spec, 2, "base", str(root / "rr"), verbose=0, log=lambda *a: None)
    return root / "rr" / "base"


@dataclass
class Case:
    exp: Path
    victim: Path
    out: Path
    key: Path | None = None  # a planted signing key (MMSA_STATE_KEY for the command)
    key_refusal: str = ""  # what the refusal of that key must say

    @property
    def trials(self) -> list[Path]:
        return sorted(p for p in self.exp.glob("trial_*") if p.is_dir() and not p.is_symlink())


def _copy(base: Path, tmp: Path) -> Case:
    exp = tmp / "rr" / "base"
    shutil.copytree(base, exp, symlinks=True)
    victim = tmp / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "secret.txt").write_text(f"root:x:0:0\n{SECRET}\n")
    t = sorted(base.glob("trial_*"))[0]
    for f in ("params.json", "result.json"):  # a whole trial outside: followed, it would show up in status
        shutil.copy(t / f, victim / "sub" / f)
    (victim / "sub" / "error.txt").write_text(f"Traceback\n{SECRET}\n")
    return Case(exp, victim, tmp / "out")


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(root)).encode())
            if p.is_symlink():
                h.update(b"L" + os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


# ---- the plants: one function each (a row of the table) -----------------------------------------------------------
def _link(at: Path, to: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    if at.is_dir() and not at.is_symlink():
        shutil.rmtree(at)
    elif at.exists() or at.is_symlink():
        at.unlink()
    at.symlink_to(to)


def _link_all(paths, to: Path) -> None:
    paths = list(paths)
    assert paths, "nothing to plant: the experiment lacks the files this row replaces"
    for p in paths:
        _link(p, to)


def _rows(c: Case, t: Path) -> list[dict]:
    return [json.loads(l) for l in (t / "result.json").read_text().splitlines() if l.strip()]


def _set_rows(t: Path, rows: list[dict]) -> None:
    (t / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _checkpoint_name(name: str, live_lease: bool):
    def plant(c: Case):
        for t in c.trials:
            for src in (t, c.exp / ".mmsa-state" / "trials" / t.name):
                if (src / "result.json").is_file():
                    _set_rows(src, [{**r, "checkpoint_dir_name": name} for r in _rows(c, src)])
        if live_lease:  # export pins the checkpoint it names only while a search runs
            (c.exp / ".mmsa-lock.json").write_text(json.dumps({
                "token": "x", "host": socket.gethostname(), "pid": os.getpid(), "command": "mmsa search",
                "started": "now", "heartbeat": time.time()}))
    return plant


class _Forged:
    """Unpickling this creates CODE_MARKER: the proof that code from the experiment ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _forge_pickles(c: Case):
    data = pickle.dumps(_Forged(c.exp.parent.parent / CODE_MARKER))
    for p in [c.exp / "tuner.pkl", *c.exp.glob("searcher-state-*.pkl"), *c.exp.glob("*-state-*.pkl")]:
        p.write_bytes(data)


def _every_tmp(c: Case):
    """A link under each temporary name an atomic write used before (NAME.tmp), to the outside secret."""
    names = ["report.md", "mmsa_search.yaml", "confirm.json", ".mmsa-lock.json", "report/curves.png",
             ".mmsa-state/signatures.json", *[f"{t.name}/params.json" for t in c.trials]]
    for n in names:
        _link(c.exp / f"{n}.tmp", c.victim / "secret.txt")


def _move_out(folder: Path, to: Path) -> None:
    shutil.move(folder, to)
    folder.symlink_to(to)


def _damage(rel_glob: str, how: str):
    def plant(c: Case):
        assert list(c.exp.glob(rel_glob)), rel_glob
        for p in c.exp.glob(rel_glob):
            data = p.read_bytes()
            p.write_bytes({"empty": b"", "cut": data[: len(data) // 2], "random": os.urandom(300),
                           "binary-json": b"\x00\xff" * 50}[how])
    return plant


def _fifo(rel: str):
    def plant(c: Case):
        for p in c.exp.glob(rel):
            p.unlink()
            os.mkfifo(p)  # a blocking read would hang the command
    return plant


def _meta_field(key: str, value):
    def plant(c: Case):
        meta = yaml.safe_load((c.exp / "mmsa_search.yaml").read_text())
        meta[key] = value(c) if callable(value) else value
        (c.exp / "mmsa_search.yaml").write_text(yaml.safe_dump(meta))
    return plant


@dataclass
class Plant:
    name: str
    plant: Callable[[Case], None]
    ray: tuple[str, ...] = ()  # the commands that start Ray to run with it (refused before Ray starts, or RAY_RUNS)


RESUME = ("resume",)
PLANTS = [
    Plant("report.md -> outside file", lambda c: _link(c.exp / "report.md", c.victim / "secret.txt"), ray=RESUME),
    Plant("report.md -> dangling outside", lambda c: _link(c.exp / "report.md", c.victim / "new.md")),
    Plant("report/ -> outside folder", lambda c: _link(c.exp / "report", c.victim)),
    Plant("report/curves.png -> outside file", lambda c: _link(c.exp / "report" / "curves.png", c.victim / "secret.txt")),
    Plant("NAME.tmp beside every atomic write -> outside file", _every_tmp, ray=RESUME),
    Plant("extra trial folder -> outside folder", lambda c: _link(c.exp / "trial_zzz", c.victim / "sub"),
          ray=("resume", "search --warm-start")),
    Plant("a trial folder replaced by a link", lambda c: _move_out(c.trials[0], c.victim / "moved")),
    Plant("trial folder -> /", lambda c: _link(c.exp / "trial_root", Path("/"))),
    Plant("error.txt -> outside file", lambda c: _link(c.trials[0] / "error.txt", c.victim / "secret.txt"),
          ray=("resume", "search --warm-start")),
    Plant("result.json -> outside file", lambda c: _link(c.trials[0] / "result.json", c.victim / "secret.txt")),
    Plant("result.json -> /dev/zero", lambda c: _link(c.trials[0] / "result.json", Path("/dev/zero"))),
    Plant("params.json -> outside file", lambda c: _link(c.trials[0] / "params.json", c.victim / "secret.txt")),
    Plant("result.json is a FIFO", _fifo("trial_*/result.json")),
    Plant("error.txt is a FIFO", lambda c: os.mkfifo(c.trials[0] / "error.txt")),
    Plant("mmsa_search.yaml -> outside file", lambda c: _link(c.exp / "mmsa_search.yaml", c.victim / "secret.txt"),
          ray=("resume", "confirm", "search --warm-start")),
    Plant(".mmsa-state/ -> outside folder", lambda c: _link(c.exp / ".mmsa-state", c.victim), ray=RESUME),
    Plant(".mmsa-state/trials/T -> outside folder",
          lambda c: _link(c.exp / ".mmsa-state" / "trials" / c.trials[0].name, c.victim / "sub")),
    Plant("experiment_state -> outside file", lambda c: _link_all(c.exp.glob("experiment_state-*.json"),
                                                                  c.victim / "secret.txt")),
    Plant("checkpoint folders -> outside folder", lambda c: _link_all(c.exp.glob("trial_*/checkpoint_*"), c.victim),
          ray=RESUME),
    Plant("best-weights folder -> outside folder", lambda c: _link_all(c.exp.glob("trial_*/mmsa_best_epoch_*"),
                                                                       c.victim)),
    Plant("confirm/ -> outside folder", lambda c: _link(c.exp / "confirm", c.victim), ray=("resume", "confirm")),
    Plant("checkpoint name ../../../victim (search running)", _checkpoint_name("../../../victim", True)),
    Plant("checkpoint name absolute (search running)", lambda c: _checkpoint_name(str(c.victim), True)(c)),
    Plant("checkpoint name ../.. (no search running)", _checkpoint_name("../..", False)),
    Plant("checkpoint name not a string", _checkpoint_name(["x"], False)),
    Plant("warm_start entry ../victim", _meta_field("warm_start", [{"experiment": "../../victim"}])),
    Plant("warm_start entry /etc", _meta_field("warm_start", [{"experiment": "/etc"}])),
    Plant("name ../../victim/x (copy for a report)", _meta_field("name", lambda c: str(c.victim / "x"))),
    Plant("data_dir -> outside", _meta_field("data_dir", lambda c: str(c.victim))),
    Plant("forged pickles (tuner.pkl, searcher state)", _forge_pickles, ray=RESUME),
    Plant("result.json random bytes", _damage("trial_*/result.json", "random")),
    Plant("result.json empty", _damage("trial_*/result.json", "empty")),
    Plant("params.json cut", _damage("trial_*/params.json", "cut")),
    Plant("params.json random", _damage("trial_*/params.json", "random")),
    Plant("mmsa_search.yaml random", _damage("mmsa_search.yaml", "random")),
    Plant("mmsa_search.yaml cut", _damage("mmsa_search.yaml", "cut")),
    Plant("experiment_state cut", _damage("experiment_state-*.json", "cut")),
    Plant("signatures.json random", _damage(".mmsa-state/signatures.json", "random"), ray=RESUME),
    Plant("backup results random", _damage(".mmsa-state/trials/*/result.json", "random")),
    Plant("error.txt random", lambda c: (c.trials[0] / "error.txt").write_bytes(os.urandom(500))),
]


# Helper B's plants (forged and damaged evidence, leases, backups, verdicts, pins: tests/test_untrusted_trust.py) and
# helper C's hostile text (tests/test_hostile_text.py) as rows of the same table.
from tests.test_hostile_text import HOSTILE_TEXT  # noqa: E402
from tests.test_untrusted_trust import EXP_PLANTS, KEY_PLANTS  # noqa: E402


def _key_plant(fn):
    def plant(c: Case):
        c.key = c.exp.parent.parent / "keys" / "state.key"
        c.key.parent.mkdir()
        c.key_refusal = fn(c.key)
    return plant


def _text_everywhere(text: str):
    """A hostile string as the search's name, a trial's error and a config value (what status/report/export print)."""
    def plant(c: Case):
        _meta_field("name", text)(c)
        (c.trials[0] / "error.txt").write_text(f"Traceback\n{text}\n")
        p = c.trials[0] / "params.json"
        params = json.loads(p.read_text())
        params["model"]["text_model"] = text
        p.write_text(json.dumps(params))
    return plant


PLANTS += [Plant(f"trust: {fn.__name__}", lambda c, fn=fn: fn(c.exp)) for fn in EXP_PLANTS]
PLANTS += [Plant(f"key: {fn.__name__}", _key_plant(fn), ray=RESUME) for fn in KEY_PLANTS]
PLANTS += [Plant(f"text: {t!r}"[:50], _text_everywhere(t)) for t in HOSTILE_TEXT]


# ---- the commands --------------------------------------------------------------------------------------------------
def _warm(c: Case, demo_cfg) -> list[str]:
    space = c.out.parent / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                                     "fixed": demo_cfg.with_overrides({"epochs": 1}).to_dict()}))
    return ["search", "--space", str(space), "--name", "warm", "--storage", str(c.exp.parent), "--num-samples", "1",
            "--warm-start", str(c.exp), "--verbose", "0"]


COMMANDS: dict[str, Callable] = {
    "status": lambda c, cfg: ["status", str(c.exp)],
    "export": lambda c, cfg: ["export", str(c.exp), "-o", str(c.out / "best.yaml")],
    "report": lambda c, cfg: ["report", str(c.exp)],
    "report file://": lambda c, cfg: ["report", f"file://{c.exp}"],  # a local copy in the working folder
    "refine --dry-run": lambda c, cfg: ["refine", str(c.exp), "--dry-run", "--top", "2"],
    "resume": lambda c, cfg: ["resume", str(c.exp), "--verbose", "0"],
    "confirm": lambda c, cfg: ["confirm", str(c.exp), "--top", "1", "--seeds", "2", "--verbose", "0"],
    "search --warm-start": _warm,
}
RAY_COMMANDS = {"resume", "confirm", "search --warm-start"}  # the rest run with every plant but:
# `report file://` reads through the same readers as `report`; it runs with the plants of its own local copy step
URI_PLANTS = {"name ../../victim/x (copy for a report)", "report.md -> outside file", "extra trial folder -> outside folder",
              ".mmsa-state/ -> outside folder", "error.txt -> outside file", "result.json is a FIFO",
              "trial folder -> /"}
CASES = [(p, cmd) for p in PLANTS for cmd in COMMANDS if (cmd in p.ray if cmd in RAY_COMMANDS else
                                                          cmd != "report file://" or p.name in URI_PLANTS)]
RAY_RUNS = 2  # of those, full runs (a warm-started search); every other one is refused before Ray starts


def _run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out + out.err


def _written_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(root) for f in fs if (Path(d) / f).is_file()
            and not (Path(d) / f).is_symlink()]


@pytest.mark.slow
@pytest.mark.parametrize("plant,cmd", CASES, ids=[f"{p.name} | {c}" for p, c in CASES])
def test_untrusted_experiment(plant, cmd, base, tmp_path, demo_cfg, capsys, monkeypatch):
    c = _copy(base, tmp_path)
    plant.plant(c)
    c.out.mkdir()
    monkeypatch.chdir(c.out)  # `report` of a URI writes ./NAME-report
    if c.key is not None:
        monkeypatch.setenv("MMSA_STATE_KEY", str(c.key))
    before = _tree_hash(c.victim)
    rc, text = _run(COMMANDS[cmd](c, demo_cfg), capsys)
    assert _tree_hash(c.victim) == before, f"{cmd} changed a file outside the experiment:\n{text[-2000:]}"
    assert not (tmp_path / CODE_MARKER).exists(), "a pickle from the experiment was loaded"
    assert SECRET not in text, f"{cmd} printed an outside file:\n{text[-2000:]}"
    for f in [*_written_files(c.exp), *_written_files(c.out)]:
        if f.suffix in (".md", ".yaml", ".json", ".txt"):
            assert SECRET not in f.read_text(errors="replace"), f"{f} holds an outside file's content"
    assert "Traceback" not in text, text[-3000:]
    if rc != 0:
        assert rc in (2, 130) and len([l for l in text.splitlines() if l.startswith("error:")]) == 1, text[-3000:]
    if c.key_refusal and cmd in RAY_COMMANDS:  # a weak key never signs or checks anything
        assert rc == 2 and c.key_refusal in text, text[-3000:]


def test_table_size():
    print(f"untrusted-experiment cases {len(CASES)}: {len(PLANTS)} plants x {len(COMMANDS)} commands "
          f"(Ray-starting commands only with the plants refused before Ray starts, plus {RAY_RUNS} full runs)")
    assert len(PLANTS) >= 30 and len(CASES) >= 4 * len(PLANTS)


# ---- writes that fail: a read-only folder, a full disk (real tmpfs mounts; skipped where mount is not permitted) ----
def _fill(mnt: Path, leave: int) -> None:
    try:
        (mnt / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(mnt).free - leave))
    except OSError:
        pass  # full already


def _one_error(rc: int, text: str, *words: str) -> None:
    errors = [l for l in text.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert any(w in errors[0] for w in words), errors[0]


@pytest.mark.slow
def test_report_on_a_read_only_folder(base, tmp_path, capsys):
    from conftest import tmpfs

    with tmpfs(tmp_path / "ro", "100m") as mnt:
        shutil.copytree(base, mnt / "base")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        rc, text = _run(["report", str(mnt / "base")], capsys)
    _one_error(rc, text, "Read-only file system")


@pytest.mark.slow
def test_report_on_a_full_disk(base, tmp_path, capsys):
    from conftest import tmpfs

    with tmpfs(tmp_path / "full", "100m") as mnt:
        shutil.copytree(base, mnt / "base")
        _fill(mnt, leave=16 * 1024)
        rc, text = _run(["report", str(mnt / "base")], capsys)
        assert not (mnt / "base" / "report.md").exists()
    _one_error(rc, text, "No space left on device")


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [0, 64])  # full from the start, or full once the first checkpoint is written
def test_train_on_a_full_disk(demo_cfg, tmp_path, capsys, leave_kib):
    from conftest import tmpfs
    from model.config import save_config

    save_config(demo_cfg.with_overrides({"epochs": 2}), tmp_path / "run.yaml")
    with tmpfs(tmp_path / "full", "20m") as mnt:
        _fill(mnt, leave=leave_kib * 1024)
        rc, text = _run(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(mnt / "run"), "--quiet"], capsys)
    _one_error(rc, text, "No space left on device", "disk is full")


def test_storage_write_probe_is_not_written_through_a_link(tmp_path):
    """`mmsa search` probes --storage with a small file; a shared storage folder may hold a link under its name."""
    from search.experiment.storage import check_local_storage

    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / ".mmsa-write-test").symlink_to(tmp_path / "secret.txt")
    check_local_storage(str(tmp_path / "rr"))
    assert (tmp_path / "secret.txt").read_text() == SECRET
