"""Command-line flags generated from the typed configs' fields (help, type, choices, range, default), so every
config key is a flag and a new key appears in `--help` without a hand-written argparse line. A flag's value is
validated by the same code as a config file's (model/config.py), so the two cannot disagree."""
from __future__ import annotations

import argparse
import dataclasses

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
