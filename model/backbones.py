"""Backbones from local files only: BERT through `from_pretrained`, torchvision ResNets with a state dict."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from safetensors.torch import load_file

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import HOW_TO_GET, check_text_model_dir

IMAGE_ARCHS = {
    "resnet10": lambda: resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1]),  # tiny: demo and tests
    "resnet18": lambda: resnet.resnet18(weights=None),
    "resnet34": lambda: resnet.resnet34(weights=None),
    "resnet50": lambda: resnet.resnet50(weights=None),
}


def load_text_backbone(path: str | Path) -> nn.Module:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    hf_logging.set_verbosity_error()  # BERT checkpoints carry a pooler we do not build ([CLS] state is used): not news
    p = check_text_model_dir(path, need_weights=True)
    try:
        # Local files only and no remote code: weights never come from the network at training time.
        # SDPA named, not left to the folder's config: encoder_mask() below builds the mask in SDPA's form.
        return BertModel.from_pretrained(str(p), local_files_only=True, trust_remote_code=False, add_pooling_layer=False,
                                         attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot load the BERT model ({e}). {HOW_TO_GET}") from None


def encoder_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 1/0 padding mask -> (B, 1, L, L) boolean mask, True where a token may attend: what transformers builds
    for SDPA itself. Given a 2D mask, transformers first asks `mask.all()` to see whether it can drop it, which reads
    the GPU from the host (a synchronisation) in every forward; a 4D mask is used as it is."""
    n = attention_mask.shape[1]
    return attention_mask.bool()[:, None, None, :].expand(-1, 1, n, n)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch pickle restricted to tensors (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: weights file not found. {HOW_TO_GET} Use image_weights: none for random init.")
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files: say which
        raise UserError(f"{p}: cannot read weights ({e}).") from None
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def load_image_backbone(arch: str, weights: str) -> tuple[nn.Module, int]:
    """The ResNet with its classifier removed, and the width of its features."""
    net = IMAGE_ARCHS[arch]()
    if weights and weights.lower() != "none":
        sd = {k: v for k, v in load_state_dict_file(weights).items() if not k.startswith("fc.")}
        want = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
        wrong = sorted(set(want) ^ set(sd)) + [k for k in want if k in sd and sd[k].shape != want[k]]
        if wrong:
            raise UserError(
                f"{weights}: does not match {arch} ({len(wrong)} tensors missing, extra or of another shape, "
                f"e.g. {wrong[0]}). Set model.image_arch to the architecture these weights belong to."
            )
        net.load_state_dict(sd, strict=False)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


def check_backbones(cfg) -> None:
    """Fail before any expensive work when a configured backbone file is missing (ModelConfig `cfg`)."""
    if cfg.modality in ("fusion", "text"):
        check_text_model_dir(cfg.text_model, need_weights=True)
    if cfg.modality in ("fusion", "image") and cfg.image_weights and cfg.image_weights.lower() != "none":
        if not Path(cfg.image_weights).is_file():
            raise UserError(f"{cfg.image_weights}: weights file not found (model.image_weights). {HOW_TO_GET} "
                            "Use image_weights: none for random init.")
