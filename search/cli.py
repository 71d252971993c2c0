"""`mmsa`: the command line. Each subcommand imports what it needs when it runs, so `mmsa check-data` does not
pay for importing Ray. User errors print one clear message (no traceback) and exit with status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.printable import term
from data_pipeline.safe_yaml import load_yaml_text

from search.settings.cli_flags import add_config_flags, add_options, check_options, config_flags


def _overrides(args) -> dict:
    flat = {}
    for item in getattr(args, "set", None) or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=1e-5")
        flat[key.strip()] = load_yaml_text(value, f"--set {key.strip()}")
    flat.update(config_flags(args))
    return flat


def _run_config(args):
    from model.config import Config

    if args.config:
        from search.commands.export import load_run_config

        return load_run_config(args.config, _overrides(args), allow_other_data=args.allow_other_data)
    flat = _overrides(args)
    return Config().with_overrides(flat, source="command line") if flat else Config()


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from model.config import DataConfig, ModelConfig, TrainConfig

    p.add_argument("--config", type=Path, help="YAML with data:/model:/train: sections (or a `mmsa export` file)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. --set model.complexity=high")
    add_options(p, "quiet")
    p.add_argument("--allow-other-data", action="store_true",
                   help="use a `mmsa export` file with data other than the search's (refused by default)")
    add_config_flags(p, DataConfig, "data", aliases={"data_dir": "data"})
    add_config_flags(p, ModelConfig, "model")
    add_config_flags(p, TrainConfig, "train")


# ---- handlers -----------------------------------------------------------------------------------------------
def cmd_check_data(args) -> int:
    from data_pipeline.check import check_data
    from model.config import Config

    d = Config().with_overrides(config_flags(args), source="command line").data  # the same ranges as training's
    report, usable = check_data(args.dir, d.val_fraction, d.split_seed)
    print(term(report, lines=True))  # names of link targets are the dataset's, not ours
    return 0 if usable else 1


def cmd_make_demo_data(args) -> int:
    from data_pipeline.demo_data import make_demo_data

    if args.n < 1 or args.seed < 0 or not 0 <= args.corrupt <= args.n:
        raise UserError(f"--n {args.n}, --seed {args.seed}, --corrupt {args.corrupt}: need n >= 1, seed >= 0 and "
                        "0 <= corrupt <= n.")
    s = make_demo_data(args.dir, n=args.n, seed=args.seed, corrupt=args.corrupt, overwrite=args.overwrite)
    print(f"wrote demo dataset to {args.dir}: train {s['train']}, test {s['test']} rows"
          + (f", broken pictures {s['broken']}" if s["broken"] else ""))
    return 0


def cmd_make_tiny_pretrained(args) -> int:
    from model.pretrained import make_tiny_pretrained

    paths = make_tiny_pretrained(args.dir, overwrite=args.overwrite, size=args.size)
    what = "tiny" if args.size == "tiny" else "real-size random"
    print(f"{what} BERT: {paths['text_model']}\n{what} ResNet ({paths['image_arch']}) weights: {paths['image_weights']}\n"
          f"use them with: --set model.text_model={paths['text_model']} --set model.image_arch={paths['image_arch']} "
          f"--set model.image_weights={paths['image_weights']}")
    return 0


def cmd_fetch_pretrained(args) -> int:
    from model.pretrained import fetch_pretrained

    for p in fetch_pretrained(args.dir, tuple(args.only or ("bert", "resnet50")), overwrite=args.overwrite):
        print(f"wrote {p}")
    return 0


def cmd_train(args) -> int:
    from model.run import train_run

    cfg = _run_config(args)
    train_run(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(f"results in {args.out}: model.safetensors, config.yaml, metrics.json, metrics.csv, curves.png")
    return 0


def cmd_predict(args) -> int:
    import tempfile

    from model.run import predict_run
    from search.experiment import storage

    if not storage.is_uri(args.model):
        predict_run(Path(args.model), args.data, args.out, probs=args.probs, progress=not args.quiet,
                    skip_bad=args.skip_bad or None, overwrite=args.overwrite)
        return 0
    # a model on object storage (the checkpoint `mmsa export` names in an s3:// search): its two files, fetched
    with tempfile.TemporaryDirectory(prefix="mmsa-model-") as local:
        storage.fetch_model(args.model, Path(local))
        predict_run(local, args.data, args.out or Path("predictions.txt"), probs=args.probs, progress=not args.quiet,
                    skip_bad=args.skip_bad or None, overwrite=args.overwrite)
    return 0


def cmd_ablate(args) -> int:
    from model.run import ablate_run

    ablate_run(_run_config(args), args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"ablation table: {Path(args.out) / 'ablation.md'}, plot: {Path(args.out) / 'ablation.png'}")
    return 0


def cmd_demo(args) -> int:
    from search.commands.demo import run_demo

    n = {"num_samples": args.num_samples} if args.num_samples is not None else {}  # run_demo's own default
    run_demo(args.out, quiet=args.quiet, optuna_storage=args.optuna_storage, **n)
    return 0


def cmd_search(args) -> int:
    import dataclasses

    from model.config import DataConfig, build_section

    from search.experiment import layout as experiment
    from search.settings.space import SearchConfig, load_spec
    from search.tune.tuner import run_search

    spec = load_spec(args.space)
    flags = config_flags(args)
    if "data.data_dir" not in flags and spec.fixed.data.data_dir == DataConfig().data_dir:
        raise UserError("no data: pass --data DIR, or set data_dir in the space file's fixed: data: section.")
    spec.fixed = spec.fixed.with_overrides({k: v for k, v in flags.items() if not k.startswith("search.")},
                                           source="command line")
    search = {k.split(".", 1)[1]: v for k, v in flags.items() if k.startswith("search.")}
    spec.search = build_section(SearchConfig, {**dataclasses.asdict(spec.search), **search}, "command line: search")
    if args.warm_start_any_data and not args.warm_start:
        raise UserError("--warm-start-any-data: only with --warm-start EXP (it allows warm starts from other data).")
    if args.enqueue:
        from search.selection.warm_start import enqueue_points

        spec.enqueue = enqueue_points(spec, args.enqueue)
    exp = experiment.location(str(args.storage), args.name)
    launch = run_search
    if args.if_exists == "resume":  # a job that restarts: start, or continue this same search (docs/cluster.md)
        from search.tune.relaunch import search_or_resume as launch
    try:
        if launch(spec, args.num_samples, args.name, str(args.storage), address=args.address,
                  shared_storage=args.shared_storage, optuna_storage=args.optuna_storage, verbose=args.verbose,
                  warm_start=args.warm_start, warm_any_data=args.warm_start_any_data,
                  break_lock=args.break_lock, mlflow=args.mlflow) == "finished":
            return 0
    except KeyboardInterrupt:  # a second Ctrl-C skips Ray's last state snapshot; the last one taken still resumes
        return _interrupted(exp)
    return _finished(exp)


def cmd_refine(args) -> int:
    from search.experiment import storage
    from search.experiment.layout import location, meta_exists
    from search.selection.opened import Experiment
    from search.commands.refine import check_refine_args, default_name, stage_storage, write_refine_space

    check_refine_args(args.top, args.num_samples)
    budget = _time_budget_flag(args)
    _mlflow_flag(args)
    if args.num_samples is None and not args.dry_run:
        raise UserError("mmsa refine: pass --num-samples N (the second stage's trials), or --dry-run to only write "
                        "the space file.")
    opened = Experiment(storage.normalize(args.experiment))
    exp, meta = opened.path, opened.meta
    name = args.name or default_name(exp)
    parent, rexp = stage_storage(exp), location(stage_storage(exp), name)
    if not args.dry_run:  # everything that would refuse the run, before the space file is written
        from data_pipeline.dataset import check_data_dir
        from data_pipeline.preprocess import check_same_data

        from search.experiment.layout import ever_ran
        from search.tune.tuner import check_search_args

        check_search_args(args.num_samples, name, args.optuna_storage)
        if meta_exists(rexp) and ever_ran(rexp):
            raise UserError(f"{rexp} already holds a search; pick another --name, or continue it with "
                            f"`mmsa resume {rexp}`.")
        check_data_dir(meta["data_dir"])
        if not args.warm_start_any_data:
            check_same_data(exp, meta["data_fingerprint"], meta["data_dir"], meta["data_dir"], "its trials say little "
                            "about the data now. Pass --warm-start-any-data to refine from them anyway, or start a new search.")
    path, d, notes = write_refine_space(opened, name, args.top, overwrite=args.overwrite)
    fs, p = storage.filesystem(path)
    print(f"wrote {term(path)}:\n{term((storage.read_bytes(fs, p) or b'').decode(errors='replace'), lines=True)}")
    if args.dry_run:
        print(f"run it with: mmsa search --space {path} --warm-start {exp} --name {name} --num-samples N")
        return 0
    from search.settings.space import load_spec
    from search.tune.tuner import run_search

    spec = load_spec(path)
    spec.search.time_budget = budget.get("time_budget", spec.search.time_budget)
    try:
        run_search(spec, args.num_samples, name, parent, address=args.address,
                   shared_storage=args.shared_storage or meta.get("shared_storage") is True,  # as the search was told
                   optuna_storage=args.optuna_storage, verbose=args.verbose, warm_start=[opened],
                   warm_any_data=args.warm_start_any_data,
                   extra_meta={"refined_from": exp, "refine_notes": notes}, break_lock=args.break_lock,
                   mlflow=args.mlflow)
    except KeyboardInterrupt:
        return _interrupted(rexp)
    return _finished(rexp)


def cmd_resume(args) -> int:
    from search.experiment import storage
    from search.experiment.layout import is_confirm_run
    from search.selection.opened import Experiment
    from search.tune.tuner import resume_search

    budget = _time_budget_flag(args)
    _mlflow_flag(args)
    exp = Experiment(storage.normalize(args.experiment))  # its metadata is read once, here, for the whole resume
    if is_confirm_run(exp.meta) and budget:
        raise UserError("--time-budget: a `mmsa confirm` run has no time budget; resume it without the option.")
    if is_confirm_run(exp.meta) and args.mlflow is not None:
        raise UserError("--mlflow: a `mmsa confirm` run is not logged to MLflow; `mmsa export` of the search logs its "
                        "evidence to the search's parent run.")
    if is_confirm_run(exp.meta):  # a `mmsa confirm` run: its evidence is written at the end
        from search.commands.confirm import resume_confirm as resume_search  # noqa: F811
    else:
        budget["mlflow"] = args.mlflow
    try:
        resume_search(exp, address=args.address, verbose=args.verbose, trust_state=args.trust_state,
                      break_lock=args.break_lock, shared_storage=args.shared_storage, **budget)
    except KeyboardInterrupt:
        return _interrupted(args.experiment)
    return _finished(exp, args.experiment)


def _mlflow_flag(args) -> None:
    """--mlflow without MLflow installed: refused before the experiment is even read."""
    if args.mlflow is not None:
        from search.experiment.mlflow_runs import require_mlflow

        require_mlflow()


def _time_budget_flag(args) -> dict:
    """{"time_budget": the --time-budget given} (checked now, before anything is read), or {}."""
    from search.settings.duration import parse_duration

    value = config_flags(args).get("search.time_budget")
    parse_duration(value, "--time-budget")
    return {} if value is None else {"time_budget": value}


def cmd_confirm(args) -> int:
    from search.commands.confirm import check_confirm_args, confirm_location, run_confirm

    check_confirm_args(args.top, args.seeds)
    cexp = confirm_location(args.experiment)
    try:
        ev = run_confirm(args.experiment, args.top, args.seeds, address=args.address, verbose=args.verbose,
                         break_lock=args.break_lock, shared_storage=args.shared_storage)
    except KeyboardInterrupt:
        return _interrupted(cexp)
    if ev is None:
        return _interrupted(cexp)
    from search.commands.confirm import chosen

    c = chosen(ev)
    print(f"confirmed: trial {term(c['trial_id'])}'s configuration, {c['epochs']} epochs (mean val_loss "
          f"{c['val_loss_at_epochs']:.4f}, mean val_acc {c['val_acc_at_epochs']:.4f}, mean val_macro_f1 "
          f"{c['val_f1_at_epochs']:.4f} over {c['runs']} seeds); "
          f"{ev['trial_epochs']} trial-epochs. Evidence in {args.experiment}/confirm.json and `mmsa report "
          f"{args.experiment}`; `mmsa export {args.experiment} -o best.yaml` exports this choice")
    return 0


def _finished(exp, named=None) -> int:
    """After Ray's fit returns: done, or stopped by Ctrl-C (Ray catches the first one and saves its state).
    exp: the experiment (open, or its path); named: how the user named it (default: its path)."""
    from search.selection.opened import Experiment
    from search.settings.schema import ENDED, ERROR

    opened = Experiment.open(exp)
    exp = named if named is not None else opened.path
    trials = opened.fresh_trials()  # as the run left them
    open_trials = [t for t in trials if t.state not in ENDED]
    spent = _budget_spent(opened, exp)
    if spent:
        print(spent)
    elif len(trials) < opened.meta["num_samples"] or open_trials:
        return _interrupted(exp)
    errored = [t for t in trials if t.state == ERROR]
    if errored:
        print(f"{len(errored)} trial(s) ended with an error (reasons in `mmsa status {exp}`); export ignores them")
    print(f"search finished: `mmsa status {exp}` for the table, `mmsa export {exp} -o best.yaml` for the best config")
    return 0


def _budget_spent(opened, exp) -> str | None:
    """The line saying that the search's time budget ended it, or None."""
    from search.experiment import time_used
    from search.settings.duration import describe
    from search.settings.schema import TERMINATED
    from search.settings.space import parse_spec

    used = time_used.read(opened.path)
    if not used or not used[1]:
        return None
    spec = parse_spec(opened.meta["spec"], "search")
    budget, epochs = spec.search.budget_s or used[0], spec.fixed.train.epochs
    trials = [t for t in opened.fresh_trials() if t.results]
    stopped = sum(t.state == TERMINATED and len(t.results) < epochs for t in trials)
    return (f"time budget {describe(budget)} spent ({describe(used[0])} used): {len(trials)} trial(s) trained, "
            f"{stopped} of them stopped before their last epoch (by the budget or ASHA; each at an epoch boundary "
            f"with its checkpoint); no trial started after the budget. To continue, raise it: "
            f"`mmsa resume {exp} --time-budget LONGER`")


def _interrupted(exp) -> int:
    print(f"search interrupted; its state is saved. Continue it with:\n  mmsa resume {exp}", file=sys.stderr)
    return 130


def cmd_status(args) -> int:
    from search.selection.opened import Experiment
    from search.commands.status import status_table

    print(status_table(Experiment(args.experiment)))
    return 0


def cmd_report(args) -> int:
    from search.commands.report import write_report

    from search.selection.opened import Experiment

    path = write_report(Experiment(args.experiment), args.ablation)
    print(f"wrote {path} (figures in {path.parent / 'report'})")
    return 0


def cmd_export(args) -> int:
    from model.run import check_out_file

    from search.experiment import storage
    from search.selection.opened import Experiment
    from search.commands.export import better_in_earlier_stage, export_best, search_running

    check_out_file(args.output, args.overwrite, flag="--output")
    exp = Experiment(storage.normalize(args.experiment))
    info = export_best(exp, args.output)
    from search.experiment.mlflow_runs import log_export

    if log_export(exp.path, info, args.output):
        print(f"logged the choice and {args.output} to the search's MLflow parent run")
    running = search_running(exp)
    m = info["metrics"]
    if info.get("selection") == "confirmed":
        c = info["confirm"]
        print(f"confirmed choice (`mmsa confirm`, mean of {len(c['seeds'] or [])} fresh seeds): the configuration "
              f"of trial {term(info['trial_id'])}, {term(info['best_epoch'])} epochs from the mean curve, mean val_loss "
              f"{m['val_loss']:.4f}, mean val_acc {m['val_acc']:.4f}, mean val_macro_f1 {m['val_macro_f1']:.4f}; "
              f"optimised: {term(info['metric'])}")
    else:
        if info.get("outdated_confirmation"):
            print(f"note: {term(info['outdated_confirmation'])}")
        if info.get("checkpoint_note"):
            print(f"note: {term(info['checkpoint_note'])}")
        print(f"best trial {term(info['trial_id'])} by {term(info['metric'])}: epoch {term(info['best_epoch'])}, val_loss "
              f"{m['val_loss']:.4f}, val_acc {m['val_acc']:.4f}, val_macro_f1 {m['val_macro_f1']:.4f}")
        earlier = better_in_earlier_stage(exp, m[info["metric"]])
        if earlier:
            print(f"note: {term(earlier)}")
    print(f"wrote {args.output}; train the final model with "
          f"`mmsa train --config {args.output} --out runs/final`")
    if info.get("val_acc_interval") and info.get("selection") != "confirmed":
        lo, hi = info["val_acc_interval"]
        tied = info.get("tied") or []
        print(f"val_acc 95% interval [{lo:.3f}, {hi:.3f}]; {len(tied)} other trial(s) tied with it"
              + (f" ({term(', '.join(tied[:8]))}{' ...' if len(tied) > 8 else ''}): the validation set cannot tell them "
                 f"apart, `mmsa confirm {args.experiment}` re-trains the top ones with fresh seeds" if tied else ""))
    if running:
        print(f"note: the search is still running ({term(running)}): this is the best trial so far, and a "
              "better one may come; its checkpoint is pinned (kept) so that the path above stays valid.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from model.config import DataConfig

    from search.settings.space import SearchConfig

    ap = argparse.ArgumentParser(prog="mmsa", description="Hyperparameter search and training for the text+image "
                                 "sentiment classifier (BERT + ResNet fusion) on Ray Tune with Optuna and ASHA.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="demo data + tiny models, end to end, in a few minutes on a laptop CPU")
    p.add_argument("--out", type=Path, default=Path("demo"), help="where everything goes (default ./demo)")
    add_options(p, "quiet", "num_samples", "optuna_storage")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("search", help="hyperparameter search: Optuna proposes, ASHA stops, one GPU per trial")
    p.add_argument("--space", type=Path, help="search-space YAML, or a built-in space: default (the lab's lr/batch/complexity space), recommended (the real task's evidence; docs/search.md)")
    add_options(p, "num_samples", "name", required=("num_samples", "name"))
    p.add_argument("--storage", default="ray_results", help="results directory, or s3://... / gs://... (shared on clusters)")
    add_options(p, "address", "shared_storage", "optuna_storage", "mlflow", "verbose")
    add_config_flags(p, DataConfig, "data", only=("data_dir", "skip_bad"), aliases={"data_dir": "data"},
                     title="data (fixed for every trial; --data may instead be the space file's fixed: data: data_dir)")
    add_config_flags(p, SearchConfig, "search", title="search: settings (override the space file's search: section)")
    g = p.add_argument_group("coarse to fine (docs/search.md)")
    g.add_argument("--warm-start", nargs="+", metavar="EXP", help="experiments of earlier searches: their finished "
                   "trials that lie inside this space are given to Optuna before its first proposal (no epoch re-run)")
    add_options(g, "warm_start_any_data")
    g.add_argument("--enqueue", nargs="+", metavar="FILE", help="configurations to try first: `mmsa export` files or "
                   "run config YAMLs (their searched keys; values must lie inside the space)")
    add_options(p, "break_lock")
    p.add_argument("--if-exists", choices=("refuse", "resume"), default="refuse", help="when STORAGE/NAME already "
                   "holds a search: refuse (default), or resume: continue it when it is this same search (space, data "
                   "and settings; a finished one is left as it is), refuse naming each difference otherwise. For jobs "
                   "that restart (Kubernetes, Slurm --requeue): docs/cluster.md")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("refine", help="second stage: a narrower space from a search's best trials, run warm-started "
                       "from it")
    add_options(p, "experiment", "num_samples", "name", "top")
    p.add_argument("--dry-run", action="store_true", help="only write and print the space file (edit it, then run "
                   "`mmsa search --space FILE --warm-start EXP`)")
    add_options(p, "overwrite", "warm_start_any_data", "address", "shared_storage", "optuna_storage", "mlflow",
                "verbose", "break_lock")
    add_config_flags(p, SearchConfig, "search", only=("time_budget",), title="time budget (default: the search's)")
    p.set_defaults(fn=cmd_refine)

    p = sub.add_parser("resume", help="continue an interrupted search where it stopped")
    add_options(p, "experiment", "address", "shared_storage", "mlflow", "verbose", "trust_state", "break_lock")
    add_config_flags(p, SearchConfig, "search", only=("time_budget",), title="time budget (a new one replaces the "
                     "search's; the time already used counts against it)")
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("confirm", help="re-train the top configurations with fresh seeds; export then takes the best mean")
    add_options(p, "experiment", "top", "seeds", "address", "shared_storage", "verbose", "break_lock")
    p.set_defaults(fn=cmd_confirm)

    p = sub.add_parser("status", help="table of a search's trials: config, epochs, best val loss/acc, state, error")
    add_options(p, "experiment")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("report", help="write report.md with learning curves, search progress and hyperparameter plots")
    add_options(p, "experiment")
    p.add_argument("--ablation", type=Path, help="a `mmsa ablate --out` directory to include")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("export", help="write the best trial's config (best epoch, metrics, checkpoint) as YAML")
    add_options(p, "experiment")
    p.add_argument("-o", "--output", type=Path, default=Path("best.yaml"), help="the YAML to write (default best.yaml)")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("check-data", help="validate a dataset and describe it (rows, labels, encodings, images, bad files)")
    p.add_argument("dir", type=Path, help="dataset directory (train.txt, test_without_label.txt, data/)")
    add_config_flags(p, DataConfig, "data", only=("val_fraction", "split_seed"), title="the split to show (training's "
                     "data: settings)")
    p.set_defaults(fn=cmd_check_data)

    p = sub.add_parser("make-demo-data", help="write a synthetic dataset in the lab layout")
    p.add_argument("dir", type=Path)
    p.add_argument("--n", type=int, default=400, help="labelled rows (a test file of n/8 rows is written too)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt", type=int, default=0, metavar="K", help="break K pictures (missing, zero-byte, truncated, not an image)")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_make_demo_data)

    p = sub.add_parser("make-tiny-pretrained", help="write a tiny random BERT and ResNet for dry runs without downloads")
    p.add_argument("dir", type=Path)
    p.add_argument("--size", choices=("tiny", "base"), default="tiny", help="tiny (default), or base: the real "
                   "architectures (bert-base-uncased config and vocabulary size, ResNet-50) with random weights")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_make_tiny_pretrained)

    p = sub.add_parser("fetch-pretrained", help="download bert-base-uncased and ResNet-50 weights into pretrained/ (needs internet)")
    p.add_argument("dir", type=Path, nargs="?", default=Path("pretrained"))
    p.add_argument("--only", action="append", choices=("bert", "resnet50"), help="fetch only this one")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_fetch_pretrained)

    p = sub.add_parser("train", help="train one model; writes weights, metrics and curves")
    _add_run_options(p)
    p.add_argument("--out", type=Path, required=True, help="run directory, e.g. runs/final")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (the last finished epoch)")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="predict the test file with a trained model; writes predictions.txt")
    p.add_argument("--model", required=True, help="run directory written by `mmsa train`, or the best-weights folder of a "
                   "search trial (the checkpoint: that `mmsa export` names; also at s3:// or gs://)")
    p.add_argument("--data", type=Path, help="dataset directory (default: the one the model was trained on)")
    p.add_argument("--out", type=Path, help="output file (default MODEL/predictions.txt; ./predictions.txt for a "
                   "MODEL on object storage)")
    p.add_argument("--probs", action="store_true", help="also write probabilities.csv beside it")
    p.add_argument("--skip-bad", action="store_true", help="predict `null` for test samples whose files cannot be read")
    add_options(p, "overwrite", "quiet")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("ablate", help="train text-only, image-only and fusion with the same settings and compare")
    _add_run_options(p)
    p.add_argument("--out", type=Path, required=True, help="where the three runs, ablation.md and ablation.png go")
    add_options(p, "overwrite")
    p.set_defaults(fn=cmd_ablate)
    return ap


def _quiet_closed_pipe() -> int:
    """The reader of our output went away (`mmsa status EXP | head`): end quietly, as `cat` does. Python's final
    flush of stdout would raise again, so stdout now goes nowhere."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        except (OSError, ValueError):  # no file descriptor (replaced stream): nothing left to flush into the pipe
            pass
    return 141  # 128 + SIGPIPE: what a shell reports for a tool ended by a closed pipe


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_options(args)
        rc = args.fn(args)
        sys.stdout.flush()  # a pipe closed early fails here, inside the handler, not in Python's flush at exit
        return rc
    except UserError as e:
        print(f"error: {term(str(e), lines=True)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _quiet_closed_pipe()


if __name__ == "__main__":
    sys.exit(main())
