"""The BERT tokenizer, always from a local directory (weights cannot be downloaded on most GPU clusters)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HOW_TO_GET = (
    "Run `mmsa fetch-pretrained` on a machine with internet (then copy pretrained/ to the cluster), "
    "or `mmsa make-tiny-pretrained DIR` for a dry run with a tiny random model."
)


def check_text_model_dir(path: str | Path, need_weights: bool = False) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: text model directory not found. {HOW_TO_GET}")
    if not (p / "vocab.txt").is_file():
        raise UserError(f"{p}: no vocab.txt, so this is not a BERT tokenizer directory. {HOW_TO_GET}")
    if need_weights:
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: no config.json (Hugging Face model config). {HOW_TO_GET}")
        if not any((p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
            raise UserError(f"{p}: no model.safetensors weights. {HOW_TO_GET}")
    return p


def load_tokenizer(path: str | Path):
    from transformers import BertTokenizerFast

    p = check_text_model_dir(path)
    try:
        return BertTokenizerFast.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot load the tokenizer ({e}). {HOW_TO_GET}") from None


def tokenizer_fingerprint(path: str | Path) -> str:
    """Hash of the files that decide tokenisation, so a different vocabulary rebuilds the cache."""
    p = check_text_model_dir(path)
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = p / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()
