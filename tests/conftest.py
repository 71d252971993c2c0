"""Shared fixtures: demo data, tiny models and a private preprocessing cache, made once per test session."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("MMSA_SAMPLE_DIR", ROOT.parent / "shared" / "lab5-sample"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    os.environ["MMSA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["MMSA_STATE_KEY"] = str(tmp_path_factory.mktemp("key") / "state.key")  # not the user's own key
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from data_pipeline.demo_data import make_demo_data

    d = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(d, n=400, seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from model.pretrained import make_tiny_pretrained

    d = tmp_path_factory.mktemp("tiny")
    make_tiny_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_bert(tiny_dir) -> Path:
    from model.pretrained import TINY_BERT

    return tiny_dir / TINY_BERT


@pytest.fixture(scope="session")
def demo_cfg(demo_dir, tiny_dir):
    from search.commands.demo import demo_config

    return demo_config(demo_dir, tiny_dir)


@pytest.fixture
def sample_dir() -> Path:
    if not (SAMPLE / "train.txt").is_file():
        pytest.skip(f"real sample not present at {SAMPLE}")
    return SAMPLE


def write_dataset(root: Path, rows: list[tuple[str, str]], test_rows: list[str] = ("900",)) -> Path:
    """A small valid dataset with real JPEGs, for tests that break one thing at a time."""
    from PIL import Image

    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in rows))
    (root / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g in test_rows))
    for i, g in enumerate([g for g, _ in rows] + list(test_rows)):
        (root / "data" / f"{g}.txt").write_text(f"tweet number {g} happy")
        Image.new("RGB", (40 + i % 7, 30), (i * 20 % 255, 100, 50)).save(root / "data" / f"{g}.jpg", "JPEG")
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session's in-process searches (never a bare ray.init())."""
    import ray

    from search.tune.ray_cluster import init_ray

    init_ray(None)
    yield
    ray.shutdown()


@contextmanager
def tmpfs(mnt: Path, size: str):
    """A real small filesystem at mnt (a full disk, a read-only folder), or a skip where mount is not permitted."""
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
