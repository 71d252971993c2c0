"""Typed configs (data, model, train) and the ONE place their defaults live.

Defaults are the lab's final hand-tuned choice (batch 128, lr 8e-6, low complexity, 6 epochs) with the lab's
backbones from pretrained/. A YAML file has sections `data:`, `model:`, `train:`; unknown keys are errors.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.errors import UserError
from data_pipeline.safe_yaml import read_yaml_file
from model.metrics import OBJECTIVES


def opt(default, help: str, *, choices=None, lo=None, hi=None, lo_open=False, pattern=None, pattern_help=None):
    """A config field with help text and the checks `_check` applies (pattern: a regex a string must match)."""
    return field(default=default, metadata={"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "pattern": pattern, "pattern_help": pattern_help})


def short(v, limit: int = 80) -> str:
    """repr of a user's value, cut: a message must stay one readable line whatever was passed."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 5] + "...'" if isinstance(v, str) else r[: limit - 4] + " ..."


@dataclass
class DataConfig:
    data_dir: str = opt("data", "dataset directory (train.txt, test_without_label.txt, data/)")
    val_fraction: float = opt(0.2, "share of labelled rows held out for validation, stratified", lo=0.0, hi=0.9, lo_open=True)
    split_seed: int = opt(0, "seed of the train/val split (independent of the training seed)", lo=0)
    max_length: int = opt(128, "BERT tokens kept per text (truncation), incl. [CLS]/[SEP]", lo=8, hi=512)
    image_size: int = opt(224, "pictures are resized to image_size x image_size pixels", lo=16, hi=1024)
    skip_bad: bool = opt(False, "leave out samples whose picture/text cannot be read instead of failing")
    cache_dir: str = opt("", "preprocessing cache; empty = $MMSA_CACHE_DIR or ~/.cache/mmsa-tune/preprocessed")


@dataclass
class ModelConfig:
    text_model: str = opt("pretrained/bert-base-uncased", "local Hugging Face BERT directory (weights + vocab.txt)")
    image_arch: str = opt("resnet50", "torchvision ResNet of the image branch", choices=("resnet10", "resnet18", "resnet34", "resnet50"))
    image_weights: str = opt("pretrained/resnet50.safetensors", "ResNet state dict (.safetensors or .pth); 'none' = random init")
    complexity: str = opt("low", "head widths: high = 256/256/128, low = half of each", choices=("high", "low"))
    modality: str = opt("fusion", "fusion, or an ablation with one branch absent", choices=("fusion", "text", "image"))
    dropout: float = opt(0.1, "dropout before the last linear layer", lo=0.0, hi=0.9)
    freeze_text_layers: int = opt(0, "freeze the text model's embeddings and its lowest N encoder layers (not trained); "
                                  "0 = train all (the lab)", lo=0, hi=100)


@dataclass
class TrainConfig:
    epochs: int = opt(6, "maximum epochs (the lab's best was epoch 6)", lo=1, hi=1000)
    batch_size: int = opt(128, "samples per optimizer step (effective batch)", lo=1, hi=65536)
    micro_batch_size: int = opt(0, "samples per forward pass; smaller than batch_size = gradient accumulation; 0 = whole batch", lo=0)
    lr: float = opt(8e-6, "AdamW learning rate", lo=0.0, hi=1.0, lo_open=True)
    weight_decay: float = opt(0.01, "AdamW weight decay", lo=0.0, hi=1.0)
    backbone_lr_mult: float = opt(1.0, "learning rate of the backbones (text model, image ResNet) = lr x this; the new "
                                  "layers (projections, head) train at lr. 1 = one rate for all (the lab); BERT "
                                  "fine-tuning usually wants the backbone slower than a fresh head", lo=0.0, hi=100.0)
    warmup_steps: int = opt(0, "linear learning-rate warm-up from 0 over this many optimizer steps; 0 = none (the lab)",
                            lo=0)
    warmup_fraction: float = opt(0.0, "linear warm-up over this share of all optimizer steps (train.epochs x steps per "
                                 "epoch) instead of warmup_steps; 0 = none", lo=0.0, hi=1.0)
    class_weights: str = opt("none", "training-loss weight per class: none (the lab), or balanced = rows / (classes x "
                             "the class's rows), so the rare neutral class counts as much as the others; the val loss "
                             "stays unweighted, comparable between trials", choices=("none", "balanced"))
    select_metric: str = opt("val_loss", "the best epoch: the one whose weights a run keeps and whose count an export "
                             "names; val_loss (lowest, the lab) or val_acc / val_macro_f1 (highest). A search sets it "
                             "to its search.metric. Early stopping (patience) and lr_factor still watch val loss",
                             choices=tuple(OBJECTIVES))
    lr_factor: float = opt(0.5, "ReduceLROnPlateau: lr multiplier when val loss stalls", lo=0.0, hi=1.0, lo_open=True)
    lr_patience: int = opt(1, "ReduceLROnPlateau: epochs without val-loss improvement before reducing lr", lo=0)
    patience: int = opt(2, "early stop after val loss rose this many epochs in a row; 0 = never", lo=0)
    seed: int = opt(42, "seed of weights init, batch order, augmentation and dropout", lo=0)
    bucket_by_length: bool = opt(True, "group texts of similar length in training batches (less padding)")
    hflip: float = opt(0.5, "train-time probability of a horizontal flip", lo=0.0, hi=1.0)
    rotation: float = opt(10.0, "train-time random rotation range, degrees (+/-)", lo=0.0, hi=180.0)
    device: str = opt("auto", "auto (cuda if available), cuda, cuda:N or cpu", pattern=r"auto|cpu|cuda(:[0-9]+)?",
                      pattern_help="auto, cpu, cuda or cuda:N")
    precision: str = opt("auto", "autocast: bf16-mixed, 16-mixed (float16 with loss scaling) or 32; auto = bf16-mixed on "
                         "GPUs with bfloat16 tensor cores (A100, H100, L4...), 16-mixed on older ones (T4, V100), 32 on the CPU",
                         choices=("auto", "bf16-mixed", "16-mixed", "32"))
    compile: bool = opt(False, "torch.compile the model (faster steps on GPU after a warm-up of tens of seconds)")
    num_threads: int = opt(0, "CPU threads for torch; 0 = torch's default", lo=0)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass
class Config:
    """The whole config of one training run (a final model, a search trial or an ablation): data, model, train."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "config") -> "Config":
        if d is not None and not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping with sections {list(SECTIONS)}, got {short(d)}.")
        d = dict(d or {})
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise UserError(f"{source}: unknown section(s) {sorted(str(k)[:40] for k in unknown)}; expected {list(SECTIONS)}.")
        parts = {}
        for name, klass in SECTIONS.items():
            sec = d.get(name) or {}
            if not isinstance(sec, dict):
                raise UserError(f"{source}: section '{name}' must be a mapping of keys to values.")
            parts[name] = build_section(klass, sec, f"{source}: {name}")
        cfg = cls(**parts)
        cfg.check_relations(source)
        return cfg

    def check_relations(self, source: str) -> None:
        """Checks between keys (each key's own type and range are checked by build_section)."""
        t = self.train
        if t.warmup_steps and t.warmup_fraction:
            raise UserError(f"{source}: train.warmup_steps {t.warmup_steps} and train.warmup_fraction "
                            f"{t.warmup_fraction} are both set; give the warm-up one way (the other 0).")
        if t.micro_batch_size > t.batch_size:
            raise UserError(f"{source}: train.micro_batch_size {t.micro_batch_size} is larger than train.batch_size "
                            f"{t.batch_size}; a micro-batch is a part of a batch (0 = the whole batch).")

    def with_overrides(self, flat: dict[str, Any], source: str = "override") -> "Config":
        """Apply `section.key` (or unique bare `key`) overrides, validated like a file."""
        d = self.to_dict()
        for key, value in flat.items():
            sec, _, name = key.rpartition(".")
            if not sec:
                owners = [s for s, k in SECTIONS.items() if name in {f.name for f in dataclasses.fields(k)}]
                if len(owners) != 1:
                    raise UserError(f"{source}: unknown key {short(key)}.")
                sec = owners[0]
            if sec not in d or name not in d[sec]:
                raise UserError(f"{source}: unknown key {short(key)}.")
            d[sec][name] = value
        return Config.from_dict(d, source)


def build_section(klass, values: dict, where: str):
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of keys to values, got {short(values)}.")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"{where}: unknown key(s) {[str(k)[:40] for k in unknown[:5]]}{more}; "
                        f"known keys: {', '.join(fields)}.")
    kwargs = {k: _coerce(fields[k], v, f"{where}.{k}") for k, v in values.items()}
    obj = klass(**kwargs)
    for f in fields.values():
        _check(f, getattr(obj, f.name), f"{where}.{f.name}")
    return obj


def _coerce(f: dataclasses.Field, v, where: str):
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if v is None and f.default is None:  # an optional value (only fields whose default is None)
        return None
    t = t.removesuffix(" | None")
    if t == "bool":
        if isinstance(v, bool):
            return v
        raise UserError(f"{where}: expected true or false, got {short(v)}.")
    if t == "int":
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            raise UserError(f"{where}: expected an integer, got {short(v)}.")
        return int(v)
    if t == "float":
        if isinstance(v, str):
            try:
                v = float(v)  # YAML reads 8e-6 (no dot) as a string
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where}: expected a number, got {short(v)}.")
        if not math.isfinite(v):  # nan passes every range check (all comparisons are false)
            raise UserError(f"{where}: expected a finite number, got {v}.")
        return float(v)
    if t == "str":
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise UserError(f"{where}: expected a string, got {short(v)}.")
        return str(v)
    if t.startswith("dict"):
        if not isinstance(v, dict):
            raise UserError(f"{where}: expected a mapping, got {short(v)}.")
        return v
    if t.startswith("list"):
        if not isinstance(v, list):
            raise UserError(f"{where}: expected a list, got {short(v)}.")
        return v
    return v


def _check(f: dataclasses.Field, v, where: str) -> None:
    m = f.metadata
    if v is None:
        return
    if m.get("choices") and v not in m["choices"]:
        raise UserError(f"{where}: {short(v)} is not one of {', '.join(m['choices'])}.")
    if m.get("pattern") and not re.fullmatch(m["pattern"], v):
        raise UserError(f"{where}: {short(v)} is not valid; expected {m.get('pattern_help') or m['pattern']}.")
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None and (v <= lo if m.get("lo_open") else v < lo):
        raise UserError(f"{where}: {v!r} must be {'>' if m.get('lo_open') else '>='} {lo}.")
    if hi is not None and v > hi:
        raise UserError(f"{where}: {v!r} must be <= {hi}.")


def field_help(klass) -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(klass)}


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    d = read_yaml_file(p)  # size- and alias-limited (data_pipeline/safe_yaml.py)
    if d is not None and not isinstance(d, dict):
        raise UserError(f"{p}: expected a mapping with sections {list(SECTIONS)}.")
    return d or {}


def load_config(path: str | Path, extra_sections: tuple[str, ...] = ()) -> tuple[Config, dict]:
    """Load a run config; sections named in extra_sections (e.g. an export's `search:` provenance) are
    returned separately instead of being rejected."""
    d = read_yaml(path)
    extras = {k: d.pop(k) for k in extra_sections if k in d}
    return Config.from_dict(d, str(path)), extras


def save_config(cfg: Config, path: str | Path, extras: dict | None = None) -> None:
    d = cfg.to_dict()
    d.update(extras or {})
    from data_pipeline.atomic import write_file

    write_file(path, yaml.safe_dump(d, sort_keys=False).encode())
