"""`mmsa demo`: demo data + tiny models through the real pipeline, printing where each result went."""
from __future__ import annotations

import time
from pathlib import Path

from model.config import RunConfig

DEMO_ROWS = 400


def demo_config(data_dir: str | Path, tiny_dir: str | Path, cache_dir: str | Path | None = None) -> RunConfig:
    """The demo's settings: tiny backbones at 32 px and 32 tokens, learning rates suited to random init."""
    from model.pretrained import TINY_BERT, TINY_RESNET

    tiny = Path(tiny_dir)
    return RunConfig.from_dict({
        "data": {"data_dir": str(data_dir), "max_length": 32, "image_size": 32, "cache_dir": str(cache_dir or "")},
        "model": {"text_model": str(tiny / TINY_BERT), "image_arch": "resnet10", "image_weights": str(tiny / TINY_RESNET),
                  "complexity": "low", "dropout": 0.1},
        "train": {"epochs": 8, "batch_size": 32, "lr": 2e-3, "patience": 3, "seed": 0},
    }, source="demo config")


def prepare_demo(out: Path, log=print) -> tuple[Path, Path]:
    from data_pipeline.demo_data import make_demo_data
    from model.pretrained import make_tiny_pretrained

    data, tiny = out / "data", out / "pretrained-tiny"
    if not (data / "train.txt").is_file():
        make_demo_data(data, n=DEMO_ROWS, seed=0)
    if not (tiny / "resnet10.safetensors").is_file():
        make_tiny_pretrained(tiny)
    log(f"demo data: {data}\ntiny models: {tiny}")
    return data, tiny


def run_demo(out: str | Path = "demo", quiet: bool = False, log=print) -> dict:
    from model.run import predict_run, train_run

    t0 = time.perf_counter()
    out = Path(out)
    data, tiny = prepare_demo(out, log)
    cfg = demo_config(data, tiny, cache_dir=out / "cache")
    run = out / "runs" / "final"
    history = train_run(cfg, run, log=log, progress=not quiet)
    preds = predict_run(run, data, log=log, progress=not quiet)
    log(f"demo finished in {time.perf_counter() - t0:.0f} s\n  model: {run}\n  curves: {run / 'curves.png'}\n  predictions: {preds}")
    return {"run": run, "predictions": preds, "history": history}
