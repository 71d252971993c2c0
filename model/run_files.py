"""The files of a training run and of its checkpoints: weights as safetensors, the rest (optimizer, scheduler,
RNG, history) as a torch file loaded with weights_only=True. A checkpoint folder is written whole or not at all
(data_pipeline/atomic.py)."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from data_pipeline.atomic import replace_dir, write_file
from data_pipeline.errors import UserError

WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best_model.safetensors"
STATE = "trainer_state.pt"
CONFIG = "config.yaml"
DATA = "data.json"  # the data a run trained on (directory and content fingerprint), checked by --resume

__all__ = ["WEIGHTS", "BEST_WEIGHTS", "STATE", "CONFIG", "DATA", "save_weights", "save_state", "load_weights", "load_state",
           "replace_dir",
           "safetensors_shapes"]


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically, never through a link planted under the name (data_pipeline/atomic.py)."""
    write_file(path, save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}))


def save_state(state: dict, path: Path) -> None:
    """The training state (optimizer, scheduler, RNG, history) with torch.save, inside a folder being written whole.
    On a full disk torch's writer raises a RuntimeError that says nothing of space ("[enforce fail at
    inline_container.cc] unexpected pos"): it is raised as the OSError(ENOSPC) every other write gives."""
    try:
        torch.save(state, path)
    except RuntimeError as e:
        try:
            full = shutil.disk_usage(Path(path).parent).free < FULL_BYTES
        except OSError:
            full = False
        if full:
            raise OSError(errno.ENOSPC, f"No space left on device: {path}") from e
        raise


FULL_BYTES = 64 * 2**20  # less free than this after a failed write: the disk filled up (a state is 100s of MiB)


def _unreadable(path: Path, e: Exception, what: str) -> UserError:
    why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return UserError(f"{path}: cannot read {what} ({why}); the file is cut short or not what its name says. "
                     "Copy it again, or retrain.")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading the tensors (checks before training).
    safetensors also checks here that the file is as long as its header says, so a cut file fails now."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: weights file not found.")
    try:
        with safe_open(str(p), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: any unreadable file is the user's to replace
        raise _unreadable(p, e, "safetensors weights") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found.") from None
    except Exception as e:
        raise _unreadable(Path(path), e, "safetensors weights") from None


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: trainer state not found.") from None
    except Exception as e:  # pickle errors, zip errors, weights_only refusals
        raise _unreadable(Path(path), e, "the trainer state") from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "epoch", "history"} <= set(state):
        raise UserError(f"{path}: not a trainer state written by `mmsa train` (keys missing).")
    return state
