"""The project's import structure: data_pipeline <- model <- search, Ray and Optuna only in search/, no import circle
(lazy imports inside functions count too: a circle there is still a circle in the design)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "model", "search")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, mod: str | None = None) -> set[str]:
    mod, out = mod or _module(path), set()
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from . import x` imports module x
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value))  # importlib.import_module("search.x") is an import too
    from search import OLD_PATHS

    return {OLD_PATHS.get(n, n) for n in out}  # an old flat path (search.results) is the module it names now


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    mods = {_module(p): p for p in files}
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}, \
        {m: _imports(p) for m, p in mods.items()}


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_circle():
    g, _ = graph()
    assert len(g) > 30 and g["search.tune.tuner"]  # the graph is really read
    cycles = find_cycles(g)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_layers_and_where_ray_and_optuna_are_imported():
    _, imports = graph()
    bad = []
    for m, names in imports.items():
        top = {n.split(".")[0] for n in names}
        layer = m.split(".")[0]
        if layer in ("data_pipeline", "model") and top & {"ray", "optuna", "search"}:
            bad.append(f"{m} imports {sorted(top & {'ray', 'optuna', 'search'})}")
        if layer == "data_pipeline" and "model" in top:
            bad.append(f"{m} imports model")
    assert not bad, bad


# search/'s packages, lowest first: each may import only itself and those before it; cli.py sits on top.
SEARCH_ORDER = ("settings", "experiment", "selection", "trial", "tune", "commands")


def _search_layer(mod: str) -> int:
    parts = mod.split(".")
    if parts[0] != "search" or len(parts) < 2 or parts[1] not in SEARCH_ORDER:
        return len(SEARCH_ORDER)  # search itself, cli, cli_flags: the top
    return SEARCH_ORDER.index(parts[1])


def test_search_packages_import_only_the_ones_before_them():
    g, _ = graph()
    bad = [f"{m} imports {n}" for m in g if m.startswith("search.") for n in g[m]
           if n.startswith("search.") and _search_layer(n) > _search_layer(m)]
    assert not bad, bad
    assert _search_layer("search.tune.tuner") > _search_layer("search.experiment.storage")  # the order is really read


def test_search_folders_stay_small():
    """About a dozen modules a folder, at most 8 at search/'s top (issue 22)."""
    top = [p for p in (ROOT / "search").glob("*.py")]
    assert len(top) <= 8, sorted(p.name for p in top)
    for pkg in SEARCH_ORDER:
        mods = list((ROOT / "search" / pkg).glob("*.py"))
        assert 1 < len(mods) <= 13, (pkg, sorted(p.name for p in mods))


def test_old_flat_module_paths_still_import_the_moved_modules():
    """Ray pickled search.<module> paths into experiments made before the packages (tests/test_old_experiment.py
    resumes one); each old path gives the moved module itself, not a copy."""
    import importlib

    import search

    for old, new in search.OLD_PATHS.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    import search.experiment

    assert search.experiment.trial_dirname is importlib.import_module("search.experiment.layout").trial_dirname


def test_no_file_imports_an_old_flat_path():
    """The old paths are for Ray's pickles and users' scripts; the project's own code names the packages."""
    import search

    files = [p for d in (*PACKAGES, "tests", "bench") for p in (ROOT / d).rglob("*.py")
             if p.name not in ("test_layers.py", "__init__.py") and "fixtures" not in p.parts]
    bad = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names] \
                if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{p.relative_to(ROOT)}: {n}" for n in names if n in search.OLD_PATHS]
    assert not bad, bad


def test_the_layer_check_sees_old_paths_and_import_module_strings(tmp_path):
    f = tmp_path / "search" / "settings" / "x.py"
    f.parent.mkdir(parents=True)
    f.write_text("import importlib\nfrom search.results import load_trials\nimportlib.import_module('search.tune.tuner')\n")
    got = _imports(f, "search.settings.x")
    assert {"search.selection.results", "search.tune.tuner"} <= got
