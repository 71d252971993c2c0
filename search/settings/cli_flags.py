"""Command-line flags generated from the typed configs' fields (help, type, choices, range, default), so every
config key is a flag and a new key appears in `--help` without a hand-written argparse line. A flag's value is
validated by the same code as a config file's (model/config.py), so the two cannot disagree."""
from __future__ import annotations

import argparse
import dataclasses

from data_pipeline.errors import UserError

PREFIX = "cfg:"  # flags' dest is "cfg:SECTION.KEY": nothing else in the parsed args looks like that


def _type_name(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _range(m: dict) -> str:
    lo, hi = m.get("lo"), m.get("hi")
    if lo is None and hi is None:
        return ""
    left = "" if lo is None else f"{'>' if m.get('lo_open') else '>='} {lo:g}"
    right = "" if hi is None else f"<= {hi:g}"
    return "; " + " and ".join(x for x in (left, right) if x)


def add_config_flags(p: argparse.ArgumentParser, klass, section: str, *, only: tuple[str, ...] | None = None,
                     aliases: dict[str, str] | None = None, required: tuple[str, ...] = (),
                     title: str | None = None) -> None:
    """One flag per field of the dataclass `klass` (or of those named in `only`): --field-name, or the alias."""
    group = p.add_argument_group(title or f"{section}: settings (override the config file)")
    for f in dataclasses.fields(klass):
        if only is not None and f.name not in only:
            continue
        m, t = f.metadata, _type_name(f)
        flag = "--" + (aliases or {}).get(f.name, f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = (m["help"] if f.name in required else f"{m['help']} (default {default!r}{_range(m)})").replace("%", "%%")
        kwargs = {"dest": f"{PREFIX}{section}.{f.name}", "default": None, "help": help_, "required": f.name in required}
        if t == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(t, str)
            kwargs["metavar"] = {"int": "N", "float": "X"}.get(t, f.name.upper())
            if m.get("choices"):
                kwargs["choices"] = m["choices"]
                kwargs.pop("metavar")
        group.add_argument(flag, **kwargs)


def config_flags(args: argparse.Namespace) -> dict:
    """The config keys set on the command line: {"section.key": value}."""
    return {k[len(PREFIX):]: v for k, v in vars(args).items() if k.startswith(PREFIX) and v is not None}


# ---- command options --------------------------------------------------------------------------------------------
# Options that several subcommands take are declared once here, typed, with their help, range and default; each
# subcommand picks them by name (add_options), and their ranges are checked by one function (Option.check) for the
# command line and for the Python functions behind it alike.
@dataclasses.dataclass(frozen=True)
class Option:
    flag: str  # "--top", or a positional's name ("experiment")
    help: str
    kind: type | None = None  # None: an on/off switch
    default: object = None
    lo: int | None = None  # whole numbers from lo to hi (checked by `check`, one `error:` line)
    hi: int | None = None
    unit: str = ""  # what the number counts, for the range message ("of trials")
    metavar: str | None = None
    short: str | None = None
    const: str | None = None  # a value the flag may go without (nargs="?"): given alone, it stands for this

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def check(self, value) -> None:
        """Refuse a value outside the option's range (None: not given, nothing to check)."""
        if value is None or (self.lo is None and self.hi is None):
            return
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise UserError(f"{self.flag} {value}: must be a whole number{' ' + self.unit if self.unit else ''} from "
                            f"{self.lo} to {self.hi}.")

    def help_text(self) -> str:
        extra = [f"default {self.default}"] if self.default is not None and self.kind is not None else []
        extra += [f"{self.lo} to {self.hi}"] if self.lo is not None else []
        return (self.help + (f" ({'; '.join(extra)})" if extra else "")).replace("%", "%%")


OPTIONS = {o.dest: o for o in (
    Option("experiment", "experiment directory, e.g. ray_results/NAME (or its s3://, gs://, file:// URI)", str),
    Option("--num-samples", "number of trials (refine: the second stage's, not needed with --dry-run; demo: a few "
           "by default)", int, lo=1, hi=100_000, unit="of trials", metavar="N"),
    Option("--name", "experiment name: results go to STORAGE/NAME (refine: default EXP's folder name + '-refine', "
           "next to EXP; its space file is written beside it as <name>-space.yaml)", str, metavar="NAME"),
    Option("--top", "the best N trials by the search's metric, best first: refine spans its narrower space with "
           "their values, confirm re-trains their (distinct) configurations", int, default=3, lo=1, hi=100,
           metavar="N"),
    Option("--seeds", "fresh seeds per configuration", int, default=3, lo=1, hi=100, metavar="N"),
    Option("--address", "Ray cluster to join: auto or HOST:PORT (default: a fresh local instance)", str,
           metavar="ADDRESS"),
    Option("--shared-storage", "the storage is a path every node of the cluster sees (e.g. NFS) though it is not "
           "detected as such; object storage (s3://, gs://) needs no flag"),
    Option("--optuna-storage", "Optuna's study storage, e.g. sqlite:///optuna.db, to watch the study with "
           "optuna-dashboard", str, metavar="URL"),
    Option("--verbose", "Ray's status output: 0 silent, 1 concise, 2 detailed", int, default=1, lo=0, hi=2,
           metavar="N"),
    Option("--warm-start-any-data", "use the trials of a search that ran on other data, or whose data changed "
           "since (refused by default)"),
    Option("--break-lock", "take the experiment even though a lease says another `mmsa search`/`resume`/`confirm` "
           "is writing it (its holder is named); only when you know that process is gone, e.g. on a host that was "
           "shut down less than a minute ago"),
    Option("--trust-state", "load Ray's state files even though no search of yours signed them (an experiment "
           "copied from another machine or user); they are pickles, so only for experiments whose origin you trust"),
    Option("--overwrite", "replace what this command writes when it is there already (refused otherwise, and "
           "nothing is replaced)"),
    Option("--quiet", "no progress bars"),
    Option("--mlflow", "log the search to MLflow (`pip install 'mmsa-tune[mlflow]'`): a parent run for the search, a "
           "nested run per trial (sampled values, per-epoch metrics), the export's choice; URI: a tracking server "
           "(http://...), sqlite:///FILE or a folder; alone: $MLFLOW_TRACKING_URI, else ./mlflow.db. Only this "
           "process (the driver) talks to it. `mmsa resume` continues the runs by itself", str, metavar="URI",
           const=""),
)}


def add_options(p: argparse.ArgumentParser, *names: str, required: tuple[str, ...] = ()) -> None:
    """The options `names` (keys of OPTIONS) on parser p, as declared there; `required`: those p cannot do without."""
    for name in names:
        o = OPTIONS[name]
        if not o.flag.startswith("-"):
            p.add_argument(o.flag, type=o.kind, help=o.help_text())
            continue
        flags = [o.short, o.flag] if o.short else [o.flag]
        if o.kind is None:
            p.add_argument(*flags, action="store_true", help=o.help_text())
        elif o.const is not None:
            p.add_argument(*flags, type=o.kind, nargs="?", const=o.const, default=o.default, metavar=o.metavar,
                           help=o.help_text())
        else:
            p.add_argument(*flags, type=o.kind, default=o.default, metavar=o.metavar, required=name in required,
                           help=o.help_text())


def check_options(args: argparse.Namespace) -> None:
    """Every table option the command was given, checked against its range (one `error:` line each)."""
    for name, o in OPTIONS.items():
        o.check(getattr(args, name, None))
