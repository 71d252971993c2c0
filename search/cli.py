"""`mmsa`: the command line. Each subcommand imports what it needs when it runs, so `mmsa check-data` does not
pay for importing Ray. User errors print one clear message (no traceback) and exit with status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from data_pipeline.errors import UserError


def _overrides(args) -> dict:
    flat = {}
    for item in getattr(args, "set", None) or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-5")
        flat[key.strip()] = yaml.safe_load(value)
    for name in ("epochs", "lr", "batch_size", "micro_batch_size", "device"):
        if getattr(args, name, None) is not None:
            flat[f"train.{name}"] = getattr(args, name)
    if getattr(args, "data", None):
        flat["data.data_dir"] = str(args.data)
    if getattr(args, "skip_bad", False):
        flat["data.skip_bad"] = True
    return flat


def _run_config(args):
    from model.config import RunConfig, load_config

    if args.config:
        cfg, extras = load_config(args.config, extra_sections=("search",))
    else:
        cfg, extras = RunConfig(), {}
    flat = _overrides(args)
    best_epoch = (extras.get("search") or {}).get("best_epoch")
    if best_epoch and "train.epochs" not in flat:
        flat["train.epochs"] = int(best_epoch)  # an exported search result trains for its best epoch count
    return cfg.with_overrides(flat, source="command line") if flat else cfg


def _add_run_options(p: argparse.ArgumentParser, data_required: bool = False) -> None:
    p.add_argument("--config", type=Path, help="YAML with data:/model:/train: sections (or a `mmsa export` file)")
    p.add_argument("--data", type=Path, required=data_required, help="dataset directory (overrides data.data_dir)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--lr", type=float, help="override train.lr")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--micro-batch-size", type=int, help="override train.micro_batch_size (gradient accumulation)")
    p.add_argument("--device", help="override train.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable samples instead of failing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. --set model.complexity=high")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ---- handlers -----------------------------------------------------------------------------------------------
def cmd_check_data(args) -> int:
    from data_pipeline.check import check_data

    report, usable = check_data(args.dir, args.val_fraction, args.split_seed)
    print(report)
    return 0 if usable else 1


def cmd_make_demo_data(args) -> int:
    from data_pipeline.demo_data import make_demo_data

    s = make_demo_data(args.dir, n=args.n, seed=args.seed, corrupt=args.corrupt)
    print(f"wrote demo dataset to {args.dir}: train {s['train']}, test {s['test']} rows"
          + (f", broken pictures {s['broken']}" if s["broken"] else ""))
    return 0


def cmd_make_tiny_pretrained(args) -> int:
    from model.pretrained import make_tiny_pretrained

    paths = make_tiny_pretrained(args.dir)
    print(f"tiny BERT: {paths['text_model']}\ntiny ResNet (resnet10) weights: {paths['image_weights']}\n"
          f"use them with: --set model.text_model={paths['text_model']} --set model.image_arch=resnet10 "
          f"--set model.image_weights={paths['image_weights']}")
    return 0


def cmd_fetch_pretrained(args) -> int:
    from model.pretrained import fetch_pretrained

    for p in fetch_pretrained(args.dir, tuple(args.only or ("bert", "resnet50"))):
        print(f"wrote {p}")
    return 0


def cmd_train(args) -> int:
    from model.run import train_run

    cfg = _run_config(args)
    train_run(cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(f"results in {args.out}: model.safetensors, config.yaml, metrics.json, metrics.csv, curves.png")
    return 0


def cmd_predict(args) -> int:
    from model.run import predict_run

    predict_run(args.model, args.data, args.out, probs=args.probs, progress=not args.quiet)
    return 0


def cmd_ablate(args) -> int:
    from model.run import ablate_run

    ablate_run(_run_config(args), args.out, progress=not args.quiet)
    print(f"ablation table: {Path(args.out) / 'ablation.md'}, plot: {Path(args.out) / 'ablation.png'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mmsa", description="Hyperparameter search and training for the text+image "
                                 "sentiment classifier (BERT + ResNet fusion) on Ray Tune with Optuna and ASHA.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="demo data + tiny models, end to end, in a few minutes on a laptop CPU")
    p.add_argument("--out", type=Path, default=Path("demo"), help="where everything goes (default ./demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("check-data", help="validate a dataset and describe it (rows, labels, encodings, images, bad files)")
    p.add_argument("dir", type=Path, help="dataset directory (train.txt, test_without_label.txt, data/)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share to show the split for")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split to show")
    p.set_defaults(fn=cmd_check_data)

    p = sub.add_parser("make-demo-data", help="write a synthetic dataset in the lab layout")
    p.add_argument("dir", type=Path)
    p.add_argument("--n", type=int, default=400, help="labelled rows (a test file of n/8 rows is written too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt", type=int, default=0, metavar="K", help="break K pictures (missing, zero-byte, truncated, not an image)")
    p.set_defaults(fn=cmd_make_demo_data)

    p = sub.add_parser("make-tiny-pretrained", help="write a tiny random BERT and ResNet for dry runs without downloads")
    p.add_argument("dir", type=Path)
    p.set_defaults(fn=cmd_make_tiny_pretrained)

    p = sub.add_parser("fetch-pretrained", help="download bert-base-uncased and ResNet-50 weights into pretrained/ (needs internet)")
    p.add_argument("dir", type=Path, nargs="?", default=Path("pretrained"))
    p.add_argument("--only", action="append", choices=("bert", "resnet50"), help="fetch only this one")
    p.set_defaults(fn=cmd_fetch_pretrained)

    p = sub.add_parser("train", help="train one model; writes weights, metrics and curves")
    _add_run_options(p)
    p.add_argument("--out", type=Path, required=True, help="run directory, e.g. runs/final")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (the last finished epoch)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="predict the test file with a trained model; writes predictions.txt")
    p.add_argument("--model", type=Path, required=True, help="run directory written by `mmsa train`")
    p.add_argument("--data", type=Path, help="dataset directory (default: the one the model was trained on)")
    p.add_argument("--out", type=Path, help="output file (default MODEL/predictions.txt)")
    p.add_argument("--probs", action="store_true", help="also write probabilities.csv beside it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("ablate", help="train text-only, image-only and fusion with the same settings and compare")
    _add_run_options(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(fn=cmd_ablate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
