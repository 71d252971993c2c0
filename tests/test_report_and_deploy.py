"""`mmsa report` on a real search, the deploy files, and the README's commands against the CLI."""
import re
import shlex
from pathlib import Path

import pytest
import yaml
from PIL import Image

from search.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_report_on_a_real_search(demo_cfg, tmp_path, ray_local, capsys):
    from model.run import ablate_run
    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    spec = parse_spec({"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"choice": [16, 32]}},
                       "fixed": demo_cfg.with_overrides({"epochs": 3}).to_dict(), "search": {"grace_period": 1}}, "t")
    run_search(spec, 6, "rep", str(tmp_path), verbose=0, log=lambda *a: None)
    ablate_run(demo_cfg.with_overrides({"epochs": 2}), tmp_path / "abl", log=lambda *a: None, progress=False)
    assert main(["report", str(tmp_path / "rep"), "--ablation", str(tmp_path / "abl")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for section in ("## Best trial", "## Learning curves", "## Search progress", "## Hyperparameter effects",
                    "## Trials", "## Ablation", "| fusion |"):
        assert section in md, section
    for png in re.findall(r"\]\((report/[a-z]+\.png)\)", md):
        with Image.open(tmp_path / "rep" / png) as im:
            assert im.width > 500 and im.height > 300, png  # a real figure, not an empty canvas
    assert {"curves.png", "progress.png", "importance.png", "slice.png", "parallel.png", "ablation.png"} <= {
        p.name for p in (tmp_path / "rep" / "report").iterdir()}
    # TensorBoard event files are in the trial directories
    assert list((tmp_path / "rep").glob("trial_*/events.out.tfevents.*"))


def _mmsa_command_ok(cmd: str) -> None:
    argv = shlex.split(cmd.replace("\\\n", " "))
    assert argv[0] == "mmsa"
    build_parser().parse_args(argv[1:])  # SystemExit(2) on any unknown command or flag


def test_deploy_cluster_yaml():
    d = yaml.safe_load((ROOT / "deploy" / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in d, key
    assert d["head_node_type"] in d["available_node_types"]
    gpu_types = [n for n in d["available_node_types"].values() if n["resources"].get("GPU")]
    assert gpu_types and all(n["resources"]["GPU"] == 1 for n in gpu_types)
    assert any("pip install" in c and "mmsa-tune" in c for c in d["setup_commands"])
    assert "." in d["file_mounts"].values()  # the project, pretrained/ included, is synced to every node
    assert "pretrained/" not in d.get("rsync_exclude", [])
    assert any("127.0.0.1" in c for c in d["head_start_ray_commands"])
    for line in (ROOT / "deploy" / "cluster.yaml").read_text().splitlines():
        if "mmsa search --" in line:
            _mmsa_command_ok(line[line.index("mmsa search"):].rstrip('"'))


def test_deploy_rayjob_yaml():
    d = yaml.safe_load((ROOT / "deploy" / "rayjob.yaml").read_text())
    assert d["apiVersion"] == "ray.io/v1" and d["kind"] == "RayJob"
    entry = d["spec"]["entrypoint"]
    _mmsa_command_ok(entry)
    assert "--address auto" in entry and "s3://" in entry
    assert "--if-exists resume" in entry  # a restarted head pod continues the search (docs/cluster.md)
    rc = d["spec"]["rayClusterSpec"]
    assert rc["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert "--time-budget" in entry
    for g in rc["workerGroupSpecs"]:
        assert g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # every pod that writes to the bucket (the driver and the trials) has the same credentials/endpoint source
    for spec in [rc["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["workerGroupSpecs"]]:
        assert {"secretRef": {"name": "mmsa-s3", "optional": True}} in spec["containers"][0]["envFrom"]


def _doc_commands(path: Path) -> list[str]:
    text = path.read_text()
    cmds = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line.startswith("mmsa "):
                cmds.append(line)
    return cmds


@pytest.mark.parametrize("doc", ["README.md", "docs/search.md", "docs/cluster.md"])
def test_documented_commands_exist(doc):
    cmds = _doc_commands(ROOT / doc)
    assert cmds
    for cmd in cmds:
        _mmsa_command_ok(cmd)
