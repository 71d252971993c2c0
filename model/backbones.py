"""Backbones from local files only: BERT through `from_pretrained`, torchvision ResNets with a state dict."""
from __future__ import annotations

import copy
import json
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


# A warm search worker runs many trials in one process (search.reuse_workers): each weights file is read and each
# backbone built once per process, and every model gets its own deep copy (fresh parameters, nothing shared with the
# trial before). One entry per kind: a process trains one backbone pair at a time; at real size an entry is 0.4 GiB.
_LOADED: dict[str, tuple[tuple, nn.Module, int]] = {}


def _files_key(*paths: Path) -> tuple:
    """Changes when any file changes (path, size, mtime): a rewritten weights file is read again."""
    out = []
    for p in paths:
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat() if f.exists() else None  # missing: the read below says so
            out.append((str(f.resolve()), st and st.st_size, st and st.st_mtime_ns))
    return tuple(out)


def _cached(kind: str, key: tuple, build) -> tuple[nn.Module, int]:
    """A private copy of the backbone `build()` makes, built at most once per process for `key`. Building draws no
    numbers from torch's global generator (forked), so the layers a model initialises after its backbones get the
    same weights whether the backbone came from the files or from this cache."""
    hit = _LOADED.get(kind)
    if hit is None or hit[0] != key:
        _LOADED.pop(kind, None)  # the old template's memory goes before the new one is read
        with torch.random.fork_rng(devices=[]):
            net, width = build()
        _LOADED[kind] = hit = (key, net, width)
    return copy.deepcopy(hit[1]), hit[2]


def clear_backbone_cache() -> None:
    _LOADED.clear()


def load_text_backbone(path: str | Path) -> nn.Module:
    p = check_text_model_dir(path, need_weights=True)
    return _cached("text", _files_key(p), lambda: (_read_text_backbone(p), 0))[0]


def _read_text_backbone(p: Path) -> nn.Module:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening
    hf_logging.set_verbosity_error()  # BERT checkpoints carry a pooler we do not build ([CLS] state is used): not news
    try:
        # Local files only and no remote code: weights never come from the network at training time.
        # SDPA named, not left to the folder's config: encoder_mask() below builds the mask in SDPA's form.
        return BertModel.from_pretrained(str(p), local_files_only=True, trust_remote_code=False, add_pooling_layer=False,
                                         attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: weights of another shape than config.json's
        raise UserError(f"{p}: cannot load the BERT model ({str(e).splitlines()[0][:300]}). {HOW_TO_GET}") from None


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
        raise UserError(f"{p}: cannot read weights ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                        "the file is cut short or not a state dict. Copy it again.") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p}: not a state dict of tensors.")
    return sd


def _image_mismatch(arch: str, shapes: dict[str, tuple]) -> list[str]:
    """Names of tensors missing, extra or of another shape than `arch` wants (the classifier fc.* is ignored)."""
    want = {k: tuple(v.shape) for k, v in IMAGE_ARCHS[arch]().state_dict().items() if not k.startswith("fc.")}
    have = {k: tuple(v) for k, v in shapes.items() if not k.startswith("fc.")}
    return sorted(set(want) ^ set(have)) + [k for k in want if k in have and have[k] != want[k]]


def _arch_error(weights, arch: str, wrong: list[str]) -> UserError:
    return UserError(f"{weights}: does not match {arch} ({len(wrong)} tensors missing, extra or of another shape, "
                     f"e.g. {wrong[0]}). Set model.image_arch to the architecture these weights belong to.")


def load_image_backbone(arch: str, weights: str) -> tuple[nn.Module, int]:
    """The ResNet with its classifier removed, and the width of its features."""
    if weights and weights.lower() != "none":
        return _cached("image", (arch, _files_key(Path(weights))), lambda: _read_image_backbone(arch, weights))
    return _read_image_backbone(arch, weights)  # random init: the trial's seed decides it, never cached


def _read_image_backbone(arch: str, weights: str) -> tuple[nn.Module, int]:
    net = IMAGE_ARCHS[arch]()
    if weights and weights.lower() != "none":
        sd = {k: v for k, v in load_state_dict_file(weights).items() if not k.startswith("fc.")}
        wrong = _image_mismatch(arch, {k: v.shape for k, v in sd.items()})
        if wrong:
            raise _arch_error(weights, arch, wrong)
        net.load_state_dict(sd, strict=False)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


def check_text_model(path: str | Path) -> None:
    """config.json, vocab.txt and model.safetensors of a BERT folder agree (headers only, no weights read). A vocab
    larger than the embedding crashed in the middle of training (token id out of range); another hidden size failed
    in every search trial."""
    from .run_files import safetensors_shapes

    p = check_text_model_dir(path, need_weights=True)
    try:
        conf = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p / 'config.json'}: not valid JSON ({e}). {HOW_TO_GET}") from None
    if not isinstance(conf, dict) or not all(isinstance(conf.get(k), int) and conf[k] > 0 for k in ("vocab_size", "hidden_size")):
        raise UserError(f"{p / 'config.json'}: not a BERT config (needs positive integers vocab_size and hidden_size). {HOW_TO_GET}")
    kind = conf.get("model_type")
    if kind != "bert" and not (kind is None and any(str(a).startswith("Bert") for a in conf.get("architectures") or [])):
        # transformers would load another architecture's weights into BERT's layers with a warning only, and train
        raise UserError(f"{p / 'config.json'}: "
                        + (f"model_type {kind!r}, " if kind is not None else "no model_type (and no Bert* architectures), ")
                        + "but the text backbone is BERT (BertModel with BERT's WordPiece tokenizer); another "
                        "architecture's weights would not load into it as trained. Use a BERT folder (config.json "
                        "\"model_type\": \"bert\", e.g. bert-base-uncased); if this folder is a BERT saved without "
                        f"model_type, add \"model_type\": \"bert\" to its config.json. {HOW_TO_GET}")
    n_vocab = len((p / "vocab.txt").read_text(encoding="utf-8", errors="replace").splitlines())
    if n_vocab > conf["vocab_size"]:
        raise UserError(f"{p / 'vocab.txt'}: {n_vocab} tokens, but config.json's vocab_size is {conf['vocab_size']}: "
                        "the vocabulary and the model come from different BERTs. Use the folder's original files.")
    if (p / "model.safetensors").is_file():
        shapes = safetensors_shapes(p / "model.safetensors")
        emb = next((v for k, v in shapes.items() if k.endswith("embeddings.word_embeddings.weight")), None)
        if emb is None:
            raise UserError(f"{p / 'model.safetensors'}: no BERT word embeddings; not BERT weights. {HOW_TO_GET}")
        if tuple(emb) != (conf["vocab_size"], conf["hidden_size"]):
            raise UserError(f"{p / 'model.safetensors'}: word embeddings {tuple(emb)}, but config.json says vocab_size "
                            f"{conf['vocab_size']}, hidden_size {conf['hidden_size']}: the weights and config.json come "
                            "from different models. Use the folder's original files.")


def check_backbones(cfg) -> None:
    """Fail before any expensive work when a configured backbone file is missing, unreadable or does not fit
    (ModelConfig `cfg`)."""
    from .run_files import safetensors_shapes

    if cfg.modality in ("fusion", "text"):
        check_text_model(cfg.text_model)
    if cfg.modality in ("fusion", "image") and cfg.image_weights and cfg.image_weights.lower() != "none":
        if not Path(cfg.image_weights).is_file():
            raise UserError(f"{cfg.image_weights}: weights file not found (model.image_weights). {HOW_TO_GET} "
                            "Use image_weights: none for random init.")
        if cfg.image_weights.endswith(".safetensors"):  # header only; a .pth is checked when loaded
            wrong = _image_mismatch(cfg.image_arch, safetensors_shapes(cfg.image_weights))
            if wrong:
                raise _arch_error(cfg.image_weights, cfg.image_arch, wrong)
