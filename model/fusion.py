"""The lab's fusion classifier; the text-only and image-only ablations are the same class with a branch absent."""
from __future__ import annotations

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.labels import LABELS

from .backbones import encoder_mask, load_image_backbone, load_text_backbone
from .config import ModelConfig

WIDTHS = {"high": (256, 256, 128), "low": (128, 128, 64)}  # (text proj, image proj, fusion hidden)


class FusionClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int = len(LABELS)):
        super().__init__()
        w_text, w_image, w_fused = WIDTHS[cfg.complexity]
        self.uses_text = cfg.modality in ("fusion", "text")
        self.uses_image = cfg.modality in ("fusion", "image")
        width = 0
        if self.uses_text:
            self.text = load_text_backbone(cfg.text_model)
            freeze_lower_layers(self.text, cfg.freeze_text_layers, cfg.text_model)
            self.text_proj = nn.Linear(self.text.config.hidden_size, w_text)
            width += w_text
        if self.uses_image:
            self.image, feat = load_image_backbone(cfg.image_arch, cfg.image_weights)
            self.image_proj = nn.Linear(feat, w_image)
            width += w_image
        self.head = nn.Sequential(nn.Linear(width, w_fused), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(w_fused, num_classes))

    def backbones(self) -> list[nn.Module]:
        """The pretrained parts (train.backbone_lr_mult); the rest is new layers."""
        return [m for name in ("text", "image") for m in [getattr(self, name, None)] if m is not None]

    def forward(self, input_ids=None, attention_mask=None, images=None) -> torch.Tensor:
        parts = []
        if self.uses_text:
            cls = self.text(input_ids=input_ids, attention_mask=encoder_mask(attention_mask)).last_hidden_state[:, 0]
            parts.append(self.text_proj(cls))
        if self.uses_image:
            parts.append(self.image_proj(self.image(images)))
        return self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


def freeze_lower_layers(bert: nn.Module, n: int, where: str) -> None:
    """Embeddings and the lowest n encoder layers keep their pretrained weights (no gradient, left out of the
    optimizer): fewer weights to fit on a small dataset, and a faster backward pass."""
    if n == 0:
        return
    layers = bert.encoder.layer
    if n > len(layers):
        raise UserError(f"model.freeze_text_layers {n}: {where} has only {len(layers)} encoder layers; use at most "
                        f"{len(layers)}.")
    for module in (bert.embeddings, *layers[:n]):
        module.requires_grad_(False)
