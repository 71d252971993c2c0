"""`mmsa confirm` with the real Ray: a small search, its top configurations re-trained with fresh seeds (killed once
and resumed), the confirmed choice exported and trained."""
import json
import subprocess
import sys

import pytest
import yaml

from search.cli import main
from searchproc import kill_group, start, wait_rows, write_space

pytestmark = pytest.mark.slow


def test_search_then_confirm_killed_resumed_exported(tmp_path, demo_cfg, capsys):
    space = write_space(tmp_path / "space.yaml", demo_cfg.with_overrides({"patience": 0, "epochs": 2}).to_dict(),
                        {"train.lr": {"loguniform": [3e-4, 3e-3]}, "train.batch_size": {"choice": [16, 32]}},
                        {"grace_period": 2, "max_concurrent": 2})
    exp = tmp_path / "rr" / "c"
    assert main(["search", "--data", demo_cfg.data.data_dir, "--space", str(space), "--num-samples", "3", "--name",
                 "c", "--storage", str(tmp_path / "rr"), "--verbose", "0"]) == 0
    proc = start(["confirm", str(exp), "--top", "2", "--seeds", "2", "--verbose", "0"])
    assert wait_rows(proc, exp / "confirm", 1), proc.stderr.read()[-2000:]
    kill_group(proc)
    proc.wait()
    capsys.readouterr()
    # resumed in a fresh process, as a user does: the fixed configurations differ from the run config on purpose, and
    # Ray's one warning per differing value ("Pre-set value ... is not equal to ...") is not shown there either
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(exp / "confirm"), "--verbose", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Pre-set value" not in r.stderr, r.stderr[-3000:]
    evidence = json.loads((exp / "confirm.json").read_text())
    assert evidence["trial_epochs"] == 2 * 2 * 2  # top 2 configurations x 2 seeds x 2 epochs, counted in the budget
    assert main(["export", str(exp), "-o", str(tmp_path / "best.yaml")]) == 0
    assert "confirmed choice" in capsys.readouterr().out
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())["search"]
    assert exported["best_epoch"] in (1, 2)
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--out", str(tmp_path / "final"), "--quiet"]) == 0
    assert main(["status", str(exp)]) == 0
    assert "confirm" in capsys.readouterr().out
