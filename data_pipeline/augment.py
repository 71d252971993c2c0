"""Per-batch picture transforms on tensors, on whatever device the batch is on (the GPU when there is one).

uint8 (B,3,H,W) -> float, optional random horizontal flip and rotation (train only), ImageNet normalisation.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=8)
def _scale_bias(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would copy from host memory and stall the GPU stream.
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(dtype).view(1, 3, 1, 1)
    bias = (-mean / std).to(dtype).view(1, 3, 1, 1)
    return scale.to(device), bias.to(device)


def normalize(images_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x/255 - mean)/std as one multiply-add per pixel, in place on the converted copy."""
    scale, bias = _scale_bias(images_u8.device, dtype)
    return images_u8.to(dtype).mul_(scale).add_(bias)


def augment(x: torch.Tensor, hflip: float, rotation_deg: float, generator: torch.Generator) -> torch.Tensor:
    """Random flip and rotation of a normalised float batch; random numbers come from a CPU generator so the
    result is the same on CPU and GPU for a given seed."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < hflip
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotation_deg)
    if rotation_deg == 0 and not flip.any():
        return x
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = torch.where(flip, -1.0, 1.0)
    # One affine grid does both: rotate, then mirror the x axis for flipped samples.
    theta = torch.stack([torch.stack([cos * sx, -sin, torch.zeros(b)], 1),
                         torch.stack([sin * sx, cos, torch.zeros(b)], 1)], 1)
    if x.is_cuda:  # a pinned, asynchronous copy: no host synchronisation inside the training step
        theta = theta.pin_memory().to(x.device, non_blocking=True)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # Zero in normalised space is the mean colour, close to torchvision's black fill after Normalize.
    # Nearest, like torchvision's RandomRotation default the lab used (and cheaper on CPU than bilinear).
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
