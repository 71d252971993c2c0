"""The search layer and the `mmsa` command line. The only package that imports Ray or Optuna.

Packages, lowest first; each imports only those before it (tests/test_layers.py): settings, experiment, selection,
trial, tune, commands; cli.py on top.

Until issue 22 the modules sat flat in search/ (search/callbacks.py, ...). Ray pickled those import paths into every
experiment's tuner.pkl (the searcher, the callbacks, the trial folder function), and users' scripts import them, so
each old path stays importable: `import search.callbacks` gives the module search.tune.callbacks itself.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

OLD_PATHS = {  # search.<old flat module> -> where it lives now
    "search.space": "search.settings.space",
    "search.schema": "search.settings.schema",
    "search.cli_flags": "search.settings.cli_flags",
    "search.storage": "search.experiment.storage",
    "search.lock": "search.experiment.lock",
    "search.state_trust": "search.experiment.state_trust",
    "search.state_backup": "search.experiment.state_backup",
    "search.trial_backup": "search.experiment.trial_backup",
    "search.ray_internals": "search.experiment.ray_internals",
    "search.faults": "search.experiment.faults",
    "search.results": "search.selection.results",
    "search.opened": "search.selection.opened",
    "search.stats": "search.selection.stats",
    "search.confirm_files": "search.selection.confirm_files",
    "search.warm_start": "search.selection.warm_start",
    "search.trainable": "search.trial.trainable",
    "search.checkpoint_strategy": "search.trial.checkpoint_strategy",
    "search.async_checkpoint": "search.trial.async_checkpoint",
    "search.checkpoint_retention": "search.trial.checkpoint_retention",
    "search.ended_trial": "search.trial.ended_trial",
    "search.trial_errors": "search.trial.trial_errors",
    "search.worker": "search.trial.worker",
    "search.ray_cluster": "search.tune.ray_cluster",
    "search.prerun": "search.tune.prerun",
    "search.algorithms": "search.tune.algorithms",
    "search.truthful_optuna": "search.tune.truthful_optuna",
    "search.asha_state": "search.tune.asha_state",
    "search.callbacks": "search.tune.callbacks",
    "search.tuner": "search.tune.tuner",
    "search.confirm": "search.commands.confirm",
    "search.refine": "search.commands.refine",
    "search.export": "search.commands.export",
    "search.report": "search.commands.report",
    "search.status": "search.commands.status",
    "search.demo": "search.commands.demo",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in OLD_PATHS:
            return importlib.util.spec_from_loader(name, self)
        parts = name.split(".")
        if parts[0] != "search" or len(parts) < 2:
            return None
        # Only this checkout's search/: an editable install of another clone (the shared environment is linked to
        # whichever clone installed last) would otherwise serve a module this one lacks, mixing two versions.
        spec = importlib.machinery.PathFinder.find_spec(name, path if len(parts) > 2 else sys.modules["search"].__path__)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec

    def create_module(self, spec):
        module = importlib.import_module(OLD_PATHS[spec.name])
        spec.loader_state = module.__spec__  # the import machinery sets the alias's spec on the module next
        return module

    def exec_module(self, module):
        spec = module.__spec__
        if spec is not None and spec.loader is self:  # already executed under its new name, which it keeps
            module.__spec__ = spec.loader_state


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPaths())  # before an editable install's finder of another clone
