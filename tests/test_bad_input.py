"""Every `mmsa` command against a table of wrong inputs, generated where possible: each config key (model/config.py
SECTIONS, search/settings/space.py SearchConfig) with a wrong type and out-of-range values, as a flag, a --set, a config file
key and a search-space key; each file kind the tool reads truncated, empty, random bytes and of another format.
Each must give: a non-zero exit, one `error:` line naming the input, no traceback, nothing written.
The counts go into docs/reliability.md (test_table_size prints them)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.config import SECTIONS
from search.cli import main
from search.settings.space import SearchConfig

JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 200


def _type(f) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def wrong_values(f) -> list[tuple[object, str]]:
    """(value, text the message must contain) for one config field, from its type and metadata."""
    m, t = f.metadata, _type(f)
    out: list[tuple[object, str]] = []
    if t == "bool":
        out += [("maybe", "expected true or false"), (2, "expected true or false")]
    elif t == "int":
        out += [("many", "expected an integer"), (2.5, "expected an integer")]
    elif t == "float":
        out += [("fast", "expected a number"), (float("nan"), "finite"), ([1], "expected a number")]
    elif t == "str":
        out += [([1, 2], "expected a string")]
        if m.get("choices"):
            out.append(("nonsense", "is not one of"))
        if m.get("pattern"):
            out.append(("gpu0", "is not valid"))
    if t in ("int", "float"):
        lo, hi = m.get("lo"), m.get("hi")
        step = 1 if t == "int" else (0 if m.get("lo_open") else 0.5)
        if lo is not None:
            out.append((lo - step, "must be >"))
        if hi is not None:
            out.append((hi + 1, "must be <="))
    return out


def _table(classes):
    return [(sec, f.name, v, msg) for sec, k in classes.items() for f in dataclasses.fields(k) for v, msg in wrong_values(f)]


RUN_CASES = _table(SECTIONS)
SEARCH_CASES = _table({"search": SearchConfig})


def _ids(cases):
    return [f"{s}.{k}={v!r}"[:60] for s, k, v, _ in cases]


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals (a flag's type, a choice): exit 2 with `prog: error: ...`
        rc = e.code
    return rc, capsys.readouterr().err


def assert_refused(rc, err, *named):
    assert rc not in (0, None), err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in named:  # in the error line, or in the list that follows it (bad pictures: one line per guid)
        assert n in err[err.index(lines[0]):], (n, err)


def _flag(key: str) -> str:
    return "--" + {"data_dir": "data"}.get(key, key.replace("_", "-"))


# ---- config keys: in a file, as --set, as a flag, in a search space ------------------------------------------
@pytest.mark.parametrize("sec, key, value, message", RUN_CASES, ids=_ids(RUN_CASES))
def test_config_key_in_a_file(tmp_path, capsys, sec, key, value, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({sec: {key: value}}))
    rc, err = run(["train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run"], capsys)
    assert_refused(rc, err, "c.yaml", f"{sec}.{key}", message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sec, key, value, message", RUN_CASES, ids=_ids(RUN_CASES))
def test_config_key_as_set(tmp_path, capsys, sec, key, value, message):
    rc, err = run(["train", "--set", f"{sec}.{key}={json.dumps(value) if isinstance(value, list) else value}",
                   "--out", tmp_path / "run"], capsys)
    assert_refused(rc, err, f"{sec}.{key}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sec, key, value, message",
                         [c for c in RUN_CASES + SEARCH_CASES if not isinstance(c[2], (list, bool))],
                         ids=_ids([c for c in RUN_CASES + SEARCH_CASES if not isinstance(c[2], (list, bool))]))
def test_config_key_as_flag(tmp_path, capsys, sec, key, value, message):
    flag = _flag(key)
    fields = {f.name: f for f in dataclasses.fields({**SECTIONS, "search": SearchConfig}[sec])}
    if _type(fields[key]) == "bool":
        argv_val = [f"{flag}={value}"]  # a switch takes no value
    else:
        argv_val = [flag, value]
    if sec == "search":
        cmd = ["search", "--data", tmp_path / "nodata", "--num-samples", 1, "--name", "n", "--storage", tmp_path / "rr"]
    elif key in ("data_dir", "skip_bad") or sec == "search":
        cmd = ["train", "--out", tmp_path / "run"]
    else:
        cmd = ["train", "--out", tmp_path / "run"]
    rc, err = run(cmd + argv_val, capsys)
    assert_refused(rc, err)
    assert (flag in err) or (f"{sec}.{key}" in err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "rr").exists()


@pytest.mark.parametrize("sec, key, value, message", RUN_CASES + SEARCH_CASES, ids=_ids(RUN_CASES + SEARCH_CASES))
def test_config_key_in_a_search_space(tmp_path, capsys, sec, key, value, message):
    d = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    d.update({"search": {key: value}} if sec == "search" else {"fixed": {sec: {key: value}}})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    rc, err = run(["search", "--space", tmp_path / "s.yaml", "--data", tmp_path, "--num-samples", 1, "--name", "n",
                   "--storage", tmp_path / "rr"], capsys)
    assert_refused(rc, err, "s.yaml", f"{sec}.{key}", message)
    assert not (tmp_path / "rr").exists()


# ---- other flags --------------------------------------------------------------------------------------------
OTHER_FLAGS = [
    (["check-data", "{d}", "--val-fraction", "nan"], "data.val_fraction"),
    (["check-data", "{d}", "--split-seed", "-1"], "data.split_seed"),
    (["check-data", "{d}", "--val-fraction", "x"], "--val-fraction"),
    (["make-demo-data", "{t}/new", "--n", "0"], "--n 0"),
    (["make-demo-data", "{t}/new", "--corrupt", "-1"], "--corrupt -1"),
    (["make-demo-data", "{t}/new", "--seed", "-3"], "--seed -3"),
    (["make-demo-data", "{t}/new", "--n", "ten"], "--n"),
    (["search", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr"], "--data"),
    (["search", "--data", "{d}", "--num-samples", "x", "--name", "n", "--storage", "{t}/rr"], "--num-samples"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--verbose", "5"], "--verbose"),
    (["train", "--out", "{t}/run", "--set", "train.lr"], "--set 'train.lr'"),
    (["train", "--out", "{t}/run", "--set", "nokey=1"], "unknown key 'nokey'"),
    (["train", "--out", "{t}/run", "--set", "train.lr=[1"], "--set train.lr: not valid YAML"),
    (["train", "--out", "{t}/run", "--batch-size", "16", "--micro-batch-size", "32"], "train.micro_batch_size 32"),
    (["predict", "--model", "{t}/nomodel"], "not a trained model directory"),
    (["fetch-pretrained", "{t}", "--only", "gpt"], "--only"),
]


@pytest.mark.parametrize("argv, named", OTHER_FLAGS, ids=[" ".join(a[:3]) for a, _ in OTHER_FLAGS])
def test_other_flags(tmp_path, demo_dir, capsys, argv, named):
    rc, err = run([a.format(d=demo_dir, t=tmp_path) for a in argv], capsys)
    assert_refused(rc, err, named)
    assert not (tmp_path / "new").exists() and not (tmp_path / "run").exists() and not (tmp_path / "rr").exists()


# ---- files: truncated, empty, random bytes, another format ---------------------------------------------------
def _damage(kind: str, p: Path) -> None:
    data = p.read_bytes() if p.exists() else b""
    p.write_bytes({"truncated": data[: max(1, len(data) // 3)], "empty": b"", "random": os.urandom(2048),
                   "other-format": JPEG_MAGIC}[kind])


KINDS = ("truncated", "empty", "random", "other-format")


@pytest.fixture(scope="module")
def trained(demo_cfg, tmp_path_factory):
    from model.run import train_run

    run_ = tmp_path_factory.mktemp("trained") / "run"
    train_run(demo_cfg.with_overrides({"train.epochs": 1}), run_, log=lambda *_: None, progress=False)
    return run_


def _files(tmp_path, demo_dir, tiny_dir, demo_cfg, trained):
    """(file kind, path to damage, command, text the error names) after copying what the command reads."""
    from model.config import save_config

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data, symlinks=True)
    run_ = tmp_path / "run"
    shutil.copytree(trained, run_)
    bert = tmp_path / "bert"
    shutil.copytree(tiny_dir / "bert-tiny", bert)
    shutil.copy(tiny_dir / "resnet10.safetensors", tmp_path / "r10.safetensors")
    cfg = demo_cfg.with_overrides({"data.data_dir": str(data), "model.text_model": str(bert),
                                   "model.image_weights": str(tmp_path / "r10.safetensors"), "train.epochs": 1})
    save_config(cfg, tmp_path / "c.yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}))
    guid = (data / "train.txt").read_text().splitlines()[1].split(",")[0]
    train = ["train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "new", "--quiet"]
    return {
        "label file": (data / "train.txt", ["check-data", data], "train.txt"),
        "picture": (data / "data" / f"{guid}.jpg", train, f"guid {guid}"),
        "run config": (tmp_path / "c.yaml", train, "c.yaml"),
        "search space": (tmp_path / "s.yaml", ["search", "--space", tmp_path / "s.yaml", "--data", data,
                                               "--num-samples", 1, "--name", "n", "--storage", tmp_path / "rr"], "s.yaml"),
        "model weights": (run_ / "model.safetensors", ["predict", "--model", run_, "--quiet"], "model.safetensors"),
        "run config.yaml": (run_ / "config.yaml", ["predict", "--model", run_, "--quiet"], "config.yaml"),
        "trainer state": (run_ / "checkpoint" / "trainer_state.pt",
                          ["train", "--config", run_ / "config.yaml", "--out", run_, "--resume", "--epochs", 2, "--quiet"],
                          "trainer_state.pt"),
        "BERT config.json": (bert / "config.json", train, "config.json"),
        "BERT weights": (bert / "model.safetensors", train, "model.safetensors"),
        "ResNet weights": (tmp_path / "r10.safetensors", train, "r10.safetensors"),
    }


FILE_KINDS = ("label file", "picture", "run config", "search space", "model weights", "run config.yaml",
              "trainer state", "BERT config.json", "BERT weights", "ResNet weights")
FILE_CASES = [(f, k) for f in FILE_KINDS for k in KINDS
              if not (f in ("run config", "search space", "run config.yaml") and k == "empty")]  # empty YAML = defaults


@pytest.mark.parametrize("what, kind", FILE_CASES, ids=[f"{f}-{k}" for f, k in FILE_CASES])
def test_damaged_file(tmp_path, demo_dir, tiny_dir, demo_cfg, trained, capsys, what, kind):
    path, argv, named = _files(tmp_path, demo_dir, tiny_dir, demo_cfg, trained)[what]
    if what == "label file" and kind == "random":
        path.write_bytes(b"guid,tag\n" + os.urandom(64).replace(b"\n", b"x") + b"\n")  # past the header: a row
    else:
        _damage(kind, path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc, err = run(argv, capsys)
    if kind == "truncated" and what in ("run config", "search space", "run config.yaml"):
        # A YAML file cut short is often still valid YAML: it is read as what it now says, and the first value the cut
        # breaks (a path, a missing section) is the one the error names, which need not be the file.
        assert_refused(rc, err)
    else:
        assert_refused(rc, err, named)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "something was written"


def test_table_size():
    n_keys = len(RUN_CASES) * 3 + len([c for c in RUN_CASES + SEARCH_CASES if not isinstance(c[2], (list, bool))]) \
        + len(RUN_CASES + SEARCH_CASES)
    print(f"config-key cases {n_keys}, other flags {len(OTHER_FLAGS)}, files {len(FILE_CASES)}")
    assert len(RUN_CASES) > 60 and len(SEARCH_CASES) > 10


# ---- the same as separate processes: what a user sees ---------------------------------------------------------
def test_no_traceback_in_a_real_process(tmp_path, demo_dir, tiny_dir, demo_cfg, trained):
    files = _files(tmp_path, demo_dir, tiny_dir, demo_cfg, trained)
    _damage("random", files["model weights"][0])
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    for argv, named in [
        (["predict", "--model", str(tmp_path / "run"), "--quiet"], "model.safetensors: cannot read"),
        (["train", "--config", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "x")], "YAML expands to more than"),
        (["train", "--out", str(tmp_path / "x"), "--lr", "nan"], "train.lr: expected a finite number"),
    ]:
        r = subprocess.run([sys.executable, "-m", "search.cli", *argv], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and named in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr) < 1000
    assert not (tmp_path / "x").exists()


def test_non_finite_val_loss_is_never_best(tmp_path):
    from search.selection.results import TrialSummary

    t = TrialSummary("t", tmp_path, {}, "TERMINATED", [{"epoch": 1, "val_loss": math.nan}, {"epoch": 2, "val_loss": 0.9},
                                                         {"epoch": 3, "val_loss": -math.inf}])
    assert t.best["epoch"] == 2
    assert TrialSummary("u", tmp_path, {}, "TERMINATED", [{"epoch": 1, "val_loss": math.nan}]).best is None


def test_search_takes_data_from_the_space_file(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                                                     "fixed": {"data": {"data_dir": str(tmp_path / "mine")}}}))
    rc, err = run(["search", "--space", tmp_path / "s.yaml", "--num-samples", 1, "--name", "n",
                   "--storage", tmp_path / "rr"], capsys)
    assert rc == 2 and f"{tmp_path / 'mine'}: data directory not found" in err  # the space's data, no --data needed
    rc, err = run(["search", "--num-samples", 1, "--name", "n", "--storage", tmp_path / "rr"], capsys)
    assert rc == 2 and "no data: pass --data DIR, or set data_dir in the space file" in err
    assert not (tmp_path / "rr").exists()


# ---- coarse to fine: --warm-start, --enqueue, enqueue:, mmsa refine -------------------------------------------
def _c2f_files(t: Path, d: Path) -> None:
    (t / "outside.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.5}}))  # a valid lr, outside the lab's space
    (t / "nokeys.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    (t / "badkey.yaml").write_text(yaml.safe_dump({"train": {"lrr": 1e-5}}))
    (t / "space-enq.yaml").write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-6, 1e-4]}},
                                                      "enqueue": [{"train.lr": 1e-6}, {"train.lr": 1e-2}]}))
    (t / "space-enq-key.yaml").write_text(yaml.safe_dump({"space": {"train.lr": {"loguniform": [1e-6, 1e-4]}},
                                                          "enqueue": [{"train.epochs": 3}]}))
    spec = {"space": {"train.lr": {"loguniform": [1e-6, 1e-4]}}, "fixed": {"train": {"epochs": 2}},
            "search": {"grace_period": 1}}
    (t / "empty-exp").mkdir()  # an experiment whose search never finished a trial: nothing to refine from
    (t / "empty-exp" / "mmsa_search.yaml").write_text(yaml.safe_dump(
        {"name": "empty-exp", "num_samples": 1, "data_dir": str(d), "data_fingerprint": "0" * 64, "created": "now",
         "spec": spec}))
    import os
    import socket
    import time

    (t / "busy-exp").mkdir()  # a search still running (its lease held by a live process: this one)
    (t / "busy-exp" / "mmsa_search.yaml").write_text((t / "empty-exp" / "mmsa_search.yaml").read_text())
    (t / "busy-exp" / ".mmsa-lock.json").write_text(json.dumps(
        {"token": "busy", "host": socket.gethostname(), "pid": os.getpid(), "command": "mmsa search --name busy-exp",
         "start": time.time(), "heartbeat": time.time()}))


C2F_CASES = [
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start", "{t}/nothere"],
     "--warm-start {t}/nothere: no such directory"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start", "{d}"],
     "not a search experiment"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start", "{t}/empty-exp",
      "{t}/empty-exp"], "named twice"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start", "{t}/empty-exp"],
     "--warm-start-any-data"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--enqueue", "{t}/outside.yaml"],
     "outside.yaml: train.lr 0.5 is outside the space"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--enqueue", "{t}/nokeys.yaml"],
     "sets none of the searched keys"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--enqueue", "{t}/badkey.yaml"],
     "badkey.yaml: train: unknown key(s) ['lrr']"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--enqueue", "{t}/none.yaml"],
     "--enqueue {t}/none.yaml: no such file"),
    (["search", "--data", "{d}", "--space", "{t}/space-enq.yaml", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr"],
     "space-enq.yaml: enqueue[1]: train.lr 0.01 is outside the space"),
    (["search", "--data", "{d}", "--space", "{t}/space-enq-key.yaml", "--num-samples", "1", "--name", "n", "--storage",
      "{t}/rr"], "enqueue[0]: train.epochs is not searched"),
    (["refine", "{t}/nothere", "--dry-run"], "not a search experiment"),
    (["refine", "{t}/empty-exp", "--top", "0", "--dry-run"], "--top 0"),
    (["refine", "{t}/empty-exp", "--num-samples", "0"], "--num-samples 0"),
    (["refine", "{t}/empty-exp"], "pass --num-samples N"),
    (["refine", "{t}/empty-exp", "--num-samples", "2", "--name", "../up"], "--name '../up'"),
    (["refine", "{t}/empty-exp", "--dry-run"], "no finished trial"),
    (["refine", "{t}/empty-exp", "--num-samples", "2"], "ran on other data than"),  # before the space file is written
    (["refine", "{t}/busy-exp", "--dry-run"], "in use by `mmsa search --name busy-exp`"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start",
      "{t}/busy-exp", "--warm-start-any-data"], "its trials are not final yet"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "n", "--storage", "{t}/rr", "--warm-start-any-data"],
     "--warm-start-any-data: only with --warm-start"),
    (["search", "--data", "{d}", "--num-samples", "1", "--name", "empty-exp", "--storage", "{t}", "--warm-start",
      "{t}/empty-exp"], "that is the experiment this search would create"),
]


@pytest.mark.parametrize("argv, named", C2F_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in C2F_CASES])
def test_coarse_to_fine_inputs(tmp_path, demo_dir, capsys, argv, named):
    _c2f_files(tmp_path, demo_dir)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc, err = run([a.format(d=demo_dir, t=tmp_path) for a in argv], capsys)
    assert_refused(rc, err, named.format(t=tmp_path))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "something was written"
