"""The files of a training run and of its checkpoints: weights as safetensors, the rest (optimizer, scheduler,
RNG, history) as a torch file loaded with weights_only=True. A checkpoint folder is written whole or not at all
(data_pipeline/atomic.py)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_pipeline.atomic import replace_dir

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best_model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"

__all__ = ["WEIGHTS", "BEST_WEIGHTS", "STATE", "CONFIG", "save_weights", "load_weights", "load_state", "replace_dir"]


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
