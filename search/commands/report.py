"""`mmsa report ray_results/NAME`: report.md and the figures it embeds, written into the experiment directory."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data_pipeline import safe_files  # noqa: E402
from data_pipeline.atomic import write_file  # noqa: E402
from data_pipeline.errors import UserError  # noqa: E402
from data_pipeline.printable import md, md_block, term  # noqa: E402
from model.plots import save_figure  # noqa: E402

from search.experiment import storage  # noqa: E402
from search.experiment.layout import local_copy, same_data  # noqa: E402
from search.selection.opened import Experiment
from search.selection.results import (TrialSummary, accuracy_intervals, best_of, best_trial, config_value, objective_of,  # noqa: E402
                      metric_text, warm_stages)
from search.commands.status import status_table  # noqa: E402
from search.settings.schema import FINISHED, REPORTED_AT, TERMINATED, TIMESTAMP, M  # noqa: E402


def _stopped_by_asha(t: TrialSummary) -> bool:
    return t.state == TERMINATED and bool(t.results) and not t.results[-1].get(FINISHED)


def plot_learning_curves(trials: list[TrialSummary], path: Path, root: Path | None = None) -> None:
    """The lab's figure for every trial: train and val loss per epoch; ASHA-stopped trials end in an x."""
    ranked = sorted((t for t in trials if t.best is not None), key=lambda t: t.rank)  # all-NaN: no curve
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(ranked):
        color = cmap(i / max(len(ranked) - 1, 1))
        ep = [r[M.EPOCH] for r in t.results]
        for ax, key in zip(axes, (M.TRAIN_LOSS, M.VAL_LOSS)):
            ys = [r[key] for r in t.results]
            ax.plot(ep, ys, "o-", ms=3, color=color, lw=2.2 if i == 0 else 1.0, alpha=0.9,
                    label=f"{term(t.trial_id)} (best)" if i == 0 else None)
            if _stopped_by_asha(t):
                ax.plot(ep[-1], ys[-1], "x", color="red", ms=8, mew=2)
    for ax, title in zip(axes, ("train loss", "validation loss")):
        ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].plot([], [], "x", color="red", mew=2, label="stopped by ASHA")
    axes[1].legend(loc="upper right")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, max(len(ranked), 2)))
    fig.colorbar(sm, ax=axes, label=f"rank by best {ranked[0].objective.metric if ranked else M.VAL_LOSS} (1 = best)")
    fig.suptitle(f"learning curves of {len(ranked)} trials")
    save_figure(fig, path, root, bbox_inches="tight")
    plt.close(fig)


def plot_progress(trials: list[TrialSummary], path: Path, root: Path | None = None) -> None:
    """Best val loss so far against trial-epochs spent and against wall time."""
    rows = sorted(((r.get(REPORTED_AT, r.get(TIMESTAMP, 0)), r[M.VAL_LOSS], t.trial_id, _stopped_by_asha(t) and r is t.results[-1])
                   for t in trials for r in t.results))
    if not rows:
        return
    t0 = min(r[0] for r in rows)
    best = np.minimum.accumulate([r[1] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.step(np.arange(1, len(rows) + 1), best, where="post", color="tab:blue", label="best val loss so far")
    a.scatter(np.arange(1, len(rows) + 1), [r[1] for r in rows], s=10, color="gray", alpha=0.5, label="each epoch's val loss")
    stops = [(i + 1, r[1]) for i, r in enumerate(rows) if r[3]]
    if stops:
        a.scatter(*zip(*stops), marker="x", color="red", s=50, label="ASHA stopped a trial")
    a.set(xlabel="trial-epochs spent", ylabel="validation loss", title="search progress (budget)")
    b.step([(r[0] - t0) / 60 for r in rows], best, where="post", color="tab:blue", label="best val loss so far")
    b.set(xlabel="wall time since the first report (minutes)", ylabel="validation loss", title="search progress (time)")
    for ax in (a, b):
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, root)
    plt.close(fig)


def _study(trials: list[TrialSummary], space: dict):
    """An in-memory Optuna study rebuilt from the search's own trials, for Optuna's plots."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for key, spec in space.items():
        kind, args = next(iter(spec.items()))
        dists[key] = {"loguniform": lambda a: FloatDistribution(a[0], a[1], log=True),
                      "uniform": lambda a: FloatDistribution(a[0], a[1]),
                      "randint": lambda a: IntDistribution(a[0], a[1] - 1),
                      "choice": lambda a: CategoricalDistribution(a)}[kind](args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    obj = trials[0].objective if trials else M.DEFAULT_OBJECTIVE
    study = optuna.create_study(direction="minimize" if obj.mode == "min" else "maximize")
    for t in trials:
        if not t.usable:  # errored, or no epoch with a finite objective value: nothing to tell Optuna
            continue
        params = {k: config_value(t.config, k) for k in dists}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=obj.value(t.best),
                                                      intermediate_values={r[M.EPOCH]: r[obj.running] for r in t.results
                                                                           if isinstance(r.get(obj.running), (int, float))}))
        except (ValueError, TypeError):  # a value outside the space (params.json edited): not plottable against it
            continue
    return study


def _target(trials: list[TrialSummary]):
    """What the importance, slice and parallel plots score a trial by, and its name."""
    # Log scale: one diverged trial (loss 50) would otherwise flatten every other point onto the axis.
    if not trials or trials[0].objective.metric == M.VAL_LOSS:
        return (lambda t: float(np.log10(t.value))), "log10 best val loss"
    return (lambda t: float(t.value)), f"best {trials[0].objective.metric}"  # in [0, 1]: no outlier to tame


def param_importances(trials: list[TrialSummary], space: dict) -> dict[str, float]:
    """Optuna's PED-ANOVA importance of each searched key for the search's objective (what importance.png plots);
    empty with fewer than 3 usable trials or no variation."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
    study = _study(trials, space)
    if len(study.trials) < 3:
        return {}
    target, _ = _target(trials)
    try:
        return dict(get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target))
    except (ValueError, RuntimeError):
        return {}


def plot_hyperparameters(trials: list[TrialSummary], space: dict, out: Path, root: Path | None = None) -> list[tuple[str, str]]:
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # low is what we want

    study = _study(trials, space)
    figs = []
    if len(study.trials) < 3:
        return figs
    target, tname = _target(trials)
    jobs = [("importance.png", f"hyperparameter importance (PED-ANOVA) for {tname}",
             lambda: ovm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target, target_name=tname)),
            ("slice.png", f"{tname} against each hyperparameter (colour = trial number)",
             lambda: ovm.plot_slice(study, target=target, target_name=tname)),
            ("parallel.png", f"parallel coordinates (colour = {tname}, darker = better)",
             lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=tname))]
    for name, caption, make in jobs:
        try:
            ax = make()
        except (ValueError, RuntimeError) as e:  # e.g. importance needs variation in the parameters
            figs.append((name, f"{caption}: not available ({e})"))
            continue
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4.5))
        save_figure(fig, out / name, root, bbox_inches="tight")
        plt.close(fig)
        figs.append((name, caption))
    return figs


def _space_text(space: dict) -> str:
    return md("; ".join(f"{k.split('.')[1]} {kind} {args}" for k, d in space.items() for kind, args in d.items()))


def stages_markdown(exp: Path, meta: dict, trials: list[TrialSummary]) -> list[str]:
    """A warm-started search (`mmsa refine`, `mmsa search --warm-start`) with the searches it started from: stage 1..k
    = the warm-start sources, the last stage = this one; every trial with its stage, best first."""
    stages = [(i, src["experiment"], smeta, strials, set(src.get("trials") or []), err)
              for i, (src, smeta, strials, err) in enumerate(warm_stages(meta), 1)]
    if not stages:
        return []
    last = len(stages) + 1
    stages.append((last, str(exp), meta, trials, set(), ""))
    keys = list(meta["spec"]["space"])
    obj = objective_of(meta)  # the search's search.metric: what "best" means in every stage
    lines = ["## Stages", "", ("Refined from %s (`mmsa refine`)." % md(meta["refined_from"], code=True)) if meta.get("refined_from")
             else "Warm-started from earlier searches (`--warm-start`).",
             "Stage %d is this search; its Optuna study started with the finished trials of the earlier stages that "
             "lie inside its space (marked *warm*)." % last, "",
             f"| stage | experiment | trials | trial-epochs | best trial | best {md(obj.metric)} | space |", "|---|---|---|---|---|---|---|"]
    rows = []
    for i, path, smeta, strials, used, err in stages:
        if smeta is None:
            lines.append(f"| stage {i} | {md(path, code=True)} | not readable now ({md(err[:80])}) | | | | |")
            continue
        done, b = [t for t in strials if t.usable], best_of(strials)
        other = "" if i == last or same_data(meta, smeta) else " (other data: not compared)"
        lines.append(f"| stage {i}{other} | {md(path, code=True)} | {len(strials)} | {sum(len(t.results) for t in strials)} | "
                     f"{md(b.trial_id) if b else '-'} | {f'{b.objective.value(b.best):.4f}' if b else '-'} | "
                     f"{_space_text(smeta['spec']['space'])} |")
        if not other:  # validation losses on other data say nothing about this data
            rows += [(t.rank, i, t, t.trial_id in used) for t in done]
    rows.sort(key=lambda r: (r[0], r[1]))  # THE trial order (rank_key, by search.metric), as export's note
    if rows:
        _, i, t, _ = rows[0]
        lines += ["", f"Best over all stages: trial {md(t.trial_id, code=True)} of stage {i}, best {obj.metric} "
                  f"{obj.value(t.best):.4f}"
                  + (f" (export it with {md(f'mmsa export {stages[i - 1][1]}', code=True)})." if i != last else ".")]
    lines += ["", "| stage | trial | " + " | ".join(md(k.split(".")[1]) for k in keys) + " | epochs | best " + md(obj.metric) + " | warm |",
              "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for _, i, t, used in rows:
        vals = [f"{v:.3g}" if isinstance(v, float) else md(v) for v in (config_value(t.config, k) for k in keys)]
        lines.append(f"| stage {i} | {md(t.trial_id)} | " + " | ".join(vals) + f" | {len(t.results)} | {obj.value(t.best):.4f} | "
                     f"{'warm' if used else ''} |")
    return lines + [""]


def write_report(exp_dir: str | Path | Experiment, ablation: str | Path | None = None) -> Path:
    """Into the experiment directory; an s3://, gs:// or file:// experiment into ./NAME-report (a local copy of its
    results, without checkpoints)."""
    opened = Experiment.open(exp_dir)
    if storage.is_uri(opened.path):  # the report is written beside a local copy, read from there
        opened = Experiment(local_copy(opened.path, Path(report_copy_name(opened.meta.get("name"))).resolve()))
    exp = Path(opened.path)
    opened.meta, opened.trials  # noqa: B018 - read (and refused when damaged) before anything is written
    try:
        return _write_report(exp, opened, ablation)
    except OSError as e:  # a read-only folder, a full disk, or a link planted where the report goes
        raise UserError(f"{exp}: cannot write the report there ({e.strerror or e}). Free some space, make the folder "
                        "writable, or remove what is in the way (report.md and report/ must be a plain file and "
                        "folder), then run `mmsa report` again.") from None


def report_copy_name(name) -> str:
    """./NAME-report for an experiment at a URI; a name from its metadata that is not one plain folder name (`../x`,
    `/etc`) is not used."""
    parts = safe_files.plain_name(name) if isinstance(name, str) else None
    return f"{parts[0] if parts and len(parts) == 1 else 'experiment'}-report"


def _write_report(exp: Path, opened: Experiment, ablation) -> Path:
    meta, trials = opened.meta, opened.trials
    figs = exp / "report"
    safe_files.make_dirs(figs, exp)  # refuses a link planted as the figures folder
    # Labels carry trial ids and values from the experiment's files: plain text, never matplotlib's $maths$ (a
    # malformed formula would end the report in a traceback).
    with matplotlib.rc_context({"text.parse_math": False}):
        plot_learning_curves(trials, figs / "curves.png", exp)
        plot_progress(trials, figs / "progress.png", exp)
        hp = plot_hyperparameters(trials, meta["spec"]["space"], figs, exp)
    lines = [f"# Search report: {md(meta['name'])}", "",
             f"Data: {md(meta['data_dir'], code=True)} (fingerprint {md(str(meta['data_fingerprint'])[:12], code=True)}), "
             f"{md(meta['num_samples'])} trials requested, started {md(meta['created'])}.", ""]
    try:
        b = best_trial(exp, trials)
        obj = b.objective
        lines += ["## Best trial", "", f"Trial {md(b.trial_id, code=True)}: best {md(obj.metric)} **{b.best[obj.metric]:.4f}** "
                  f"at epoch {b.best[M.EPOCH]} (optimised: {md(obj.metric)}, search.metric). Its validation metrics there:", "",
                  "| " + " | ".join(M.VAL_METRICS) + " |", "|" + "---|" * len(M.VAL_METRICS),
                  "| " + " | ".join(metric_text(b.best, k) for k in M.VAL_METRICS) + " |", "",
                  "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {md(k)} | {md(config_value(b.config, k))} |" for k in meta["spec"]["space"]]
        ivs = accuracy_intervals(trials)
        iv = ivs.get(b.trial_id)
        if iv is not None:
            tied = [k for k, v in ivs.items() if v.tied]
            lines += ["", f"Val accuracy {iv.value:.4f}, 95% interval [{iv.lo:.3f}, {iv.hi:.3f}] (bootstrap over the "
                      f"validation rows). {len(tied)} other trial(s) are statistically tied with it (the paired interval "
                      f"of the accuracy difference contains 0){': ' + ', '.join(md(k, code=True) for k in tied) if tied else ''}."
                      + (f" The best trial's edge over them may be luck: {md(f'mmsa confirm {exp}', code=True)} re-trains the top "
                         "configurations with fresh seeds." if tied else "")]
        lines += ["", f"Export it with {md(f'mmsa export {exp} -o best.yaml', code=True)}.", ""]
    except Exception as e:  # an empty search still gets a report of what exists
        lines += [f"No best trial yet: {md(e)}", ""]
    lines += stages_markdown(exp, meta, trials)
    from search.commands.confirm import evidence_markdown
    from search.selection.confirm_files import checked_evidence

    ev, outdated = checked_evidence(opened, trials)
    if ev is not None:
        lines += evidence_markdown(ev) + [f"**Outdated:** {md(outdated)} `mmsa export` exports the best trial." if outdated
                                          else f"{md(f'mmsa export {exp}', code=True)} exports the confirmed choice.", ""]
    elif outdated:  # a confirm.json that is not evidence: say so, never show its numbers
        lines += ["## Confirmation (`mmsa confirm`)", "", f"**Not used:** {md(outdated)}. `mmsa export` exports the best "
                  "trial.", ""]
    lines += ["## Learning curves", "", "![learning curves](report/curves.png)", "",
              "## Search progress", "", "![search progress](report/progress.png)", "", "## Hyperparameter effects", ""]
    for name, caption in hp:
        lines += [f"![{md(caption)}](report/{name})" if "not available" not in caption else md(caption), ""]
    lines += ["## Trials", "", *md_block(status_table(opened)), ""]
    if ablation and (Path(ablation) / "ablation.md").is_file():
        write_file(figs / "ablation.png", (Path(ablation) / "ablation.png").read_bytes(), root=exp)
        lines += ["## Ablation", "", (Path(ablation) / "ablation.md").read_text(), "", "![ablation](report/ablation.png)", ""]
    write_file(exp / "report.md", "\n".join(lines).encode(), root=exp)
    return exp / "report.md"
