"""Checkpoints: weights as safetensors, the rest (optimizer, scheduler, RNG, history) as a torch file loaded
with weights_only=True. Written into a temporary directory and renamed, so a crash never leaves half a checkpoint."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best_model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def write_atomic_dir(dest: str | Path, write) -> Path:
    """Call write(tmpdir) and move tmpdir to dest, replacing an older dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
