"""Filling pretrained/: tiny random models for dry runs (no network), or the lab's real weights."""
from __future__ import annotations

import string
from pathlib import Path

import torch
from safetensors.torch import save_file

from data_pipeline.demo_data import demo_vocabulary
from data_pipeline.errors import UserError

from .backbones import IMAGE_ARCHS

TINY_BERT = "bert-tiny"
TINY_RESNET = "resnet10.safetensors"
BASE_BERT = "bert-base-random"  # bert-base-uncased's architecture and vocabulary size, random weights
BASE_RESNET = "resnet50-random.safetensors"
BASE_VOCAB = 30522  # bert-base-uncased's vocab_size
SIZES = ("tiny", "base")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _refuse_overwrite(paths: list[Path]) -> None:
    there = [str(p) for p in paths if p.exists()]
    if there:
        raise UserError(f"{', '.join(there)}: already there. Pass --overwrite to replace, or choose another directory.")


def make_tiny_pretrained(out: str | Path, seed: int = 0, dropout: float = 0.1, overwrite: bool = False,
                         size: str = "tiny") -> dict[str, Path]:
    """A tiny BERT in Hugging Face format (config.json, vocab.txt, model.safetensors) and a tiny ResNet
    state dict, loaded by exactly the same code as the real ones. size="base": the lab's real architectures
    (bert-base-uncased's config with its 30522-token vocabulary size, ResNet-50) with random weights, for measuring
    what a search costs at real size without downloads (bench/search_overhead.py)."""
    if size not in SIZES:
        raise UserError(f"--size {size!r}: choose one of {', '.join(SIZES)}.")
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out}: is a file; give a directory.")
    bert_name, resnet_name, arch = (TINY_BERT, TINY_RESNET, "resnet10") if size == "tiny" else (BASE_BERT, BASE_RESNET, "resnet50")
    if not overwrite:
        _refuse_overwrite([Path(out) / bert_name, Path(out) / resnet_name])
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out)
    bert_dir = out / bert_name
    bert_dir.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIAL + demo_vocabulary() + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = list(dict.fromkeys(vocab))
    if size == "base":  # the real embedding size: the demo words, then placeholders as bert-base-uncased has
        vocab += [f"[unused{i}]" for i in range(BASE_VOCAB - len(vocab))]
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    if size == "base":  # BertConfig's defaults are bert-base-uncased's: 768 hidden, 12 layers, 12 heads, 3072
        cfg = BertConfig(vocab_size=len(vocab), hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    else:
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(bert_dir, safe_serialization=True)
    # Build the tokenizer through from_pretrained, the same path as bert-base-uncased (constructor arguments
    # differ across transformers releases; the files do not), then save its fast tokenizer.json too.
    (bert_dir / "tokenizer.json").unlink(missing_ok=True)
    (bert_dir / "tokenizer_config.json").write_text('{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}\n')
    BertTokenizerFast.from_pretrained(str(bert_dir), local_files_only=True).save_pretrained(bert_dir)
    resnet = IMAGE_ARCHS[arch]()
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(out / resnet_name))
    return {"text_model": bert_dir, "image_weights": out / resnet_name, "image_arch": arch}


def fetch_pretrained(out: str | Path = "pretrained", what: tuple[str, ...] = ("bert", "resnet50"),
                     overwrite: bool = False) -> list[Path]:
    """Download bert-base-uncased and torchvision's ResNet-50 ImageNet weights (needs internet)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; give a directory.")
    if not overwrite:
        _refuse_overwrite([out / n for w, n in (("bert", "bert-base-uncased"), ("resnet50", "resnet50.safetensors")) if w in what])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "bert" in what:
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download("bert-base-uncased", local_dir=out / "bert-base-uncased",
                                     allow_patterns=["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
        except Exception as e:
            raise UserError(f"could not download bert-base-uncased ({type(e).__name__}: {e}). On an offline machine, "
                            "run `mmsa fetch-pretrained` where there is internet and copy pretrained/ over "
                            "(see pretrained/README.md).") from None
        written.append(Path(path))
    if "resnet50" in what:
        try:
            from torchvision.models import ResNet50_Weights

            sd = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True)
        except Exception as e:
            raise UserError(f"could not download ResNet-50 weights ({type(e).__name__}: {e}). Copy "
                            "resnet50.safetensors from a machine with internet (see pretrained/README.md).") from None
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "resnet50.safetensors"))
        written.append(out / "resnet50.safetensors")
    return written
