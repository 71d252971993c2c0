"""`mmsa demo`: demo data + tiny models + a real search (Optuna + ASHA on Ray) + export + final training +
predictions, printing where each result went."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from model.config import Config

DEMO_ROWS = 400
DEMO_SPACE = {
    # Random-init tiny models need larger learning rates than pretrained BERT; the shape of the space is the lab's.
    "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "train.batch_size": {"choice": [16, 32, 64]},
              "model.complexity": {"choice": ["high", "low"]}},
    "search": {"grace_period": 1, "reduction_factor": 2, "seed": 0},
}


def demo_config(data_dir: str | Path, tiny_dir: str | Path, cache_dir: str | Path | None = None) -> Config:
    """The demo's settings: tiny backbones at 32 px and 32 tokens, learning rates suited to random init."""
    from model.pretrained import TINY_BERT, TINY_RESNET

    tiny = Path(tiny_dir)
    return Config.from_dict({
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
    return data, tiny


def run_demo(out: str | Path = "demo", quiet: bool = False, num_samples: int = 12, optuna_storage: str | None = None,
             log=print) -> dict:
    from model.run import predict_run, train_run

    from search.commands.export import export_best, load_run_config
    from search.commands.status import status_table
    from search.settings.space import parse_spec
    from search.tune.tuner import run_search

    t0 = time.perf_counter()
    out = Path(out).resolve()
    data, tiny = prepare_demo(out, log)
    log(f"demo data: {data}\ntiny models: {tiny}")
    cfg = demo_config(data, tiny, cache_dir=out / "cache")
    spec = parse_spec({**DEMO_SPACE, "fixed": cfg.to_dict()}, "demo space")
    shutil.rmtree(out / "ray_results" / "demo", ignore_errors=True)  # a demo run starts a fresh search
    if optuna_storage:  # ... and a fresh study (a search refuses a storage that already holds its study's name)
        import optuna

        try:
            optuna.delete_study(study_name="demo", storage=optuna_storage)
        except Exception:  # noqa: BLE001 - no such study, or a bad URL that the search itself then reports clearly
            pass
    run_search(spec, num_samples, "demo", str(out / "ray_results"), verbose=0 if quiet else 1, log=log,
               optuna_storage=optuna_storage)
    exp = out / "ray_results" / "demo"
    log(status_table(exp))
    t_search = time.perf_counter() - t0
    best = out / "best.yaml"
    info = export_best(exp, best)
    final_cfg = load_run_config(best)  # trains for the best epoch count
    run = out / "runs" / "final"
    shutil.rmtree(run, ignore_errors=True)
    history = train_run(final_cfg, run, log=log, progress=not quiet)
    preds = predict_run(run, data, log=log, progress=not quiet)
    log(f"\ndemo finished in {time.perf_counter() - t0:.0f} s (search {t_search:.0f} s)\n"
        f"  search:      {exp}   (mmsa status {exp})\n"
        f"  best config: {best}   (trial {info['trial_id']}, epoch {info['best_epoch']}, val_loss {info['metrics']['val_loss']:.4f})\n"
        f"  final model: {run}   (curves.png, metrics.csv)\n"
        f"  predictions: {preds}")
    return {"experiment": exp, "best": best, "run": run, "predictions": preds, "history": history, "export": info}
