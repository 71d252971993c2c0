"""Text from an experiment's files (its name, trial ids, error lines, config values, paths) cannot change the
structure of `mmsa status`/`export` output or of report.md, nor reach the terminal as control sequences
(docs/reliability.md, Security). On experiments written by hand (no Ray)."""
import json
import re

import pytest

from data_pipeline.printable import md, md_block, term
from model.config import Config
from search.experiment import layout as experiment
from search.cli import main
from search.settings.schema import M
from tests.test_intervals import fake_experiment, rows_with, write_trial

# Hostile strings a folder from someone else may hold in any text field (the lead's planted-files table takes these).
HOSTILE_TEXT = [
    "two\nlines",
    "cr\rover",
    "\x1b[31mred\x1b[0m\x1b]0;title\x07",  # colour, and a window-title OSC
    "\x1b[2J\x1b[Hcleared",
    "<script>alert(1)</script>",
    "| a | b |",
    "# heading\n## another",
    "```\nfence",
    "**bold** _it_ [link](http://x) ![img](http://x/i.png)",
    "\u202eevil\u202c",  # right-to-left override
    "nul\x00byte\x7fdel\x9bcsi",
    "tab\there",
    "1. list\n- item\n> quote",
    "&amp; &lt;b&gt;",
    "$\\undefinedmacro{$ and $x^$",  # matplotlib's mathtext in figure labels
    "back\\slash \\*x\\* \\| <!-- comment",
    "[ref]: http://evil.example <http://evil.example> `code` ``two``",
    "\u2028line\u2029para\u0085nel",
    " spaced  ",
]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("s", HOSTILE_TEXT)
def test_term_and_md_keep_one_line_and_no_control(s):
    assert "\n" not in term(s) and not CONTROL.search(term(s).replace("\t", "")) and "\t" not in term(s)
    for code in (False, True):
        out = md(s, code=code)
        assert "\n" not in out and not CONTROL.search(out)
    assert term("plain name-1.2_x") == "plain name-1.2_x" and md("a_b", code=True) == "`a_b`"


def _rendered(text: str) -> str:
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").render(text)


@pytest.mark.parametrize("s", HOSTILE_TEXT)
def test_md_renders_as_the_literal_text(s):
    """Rendered, an escaped value is one paragraph of text, no element of its own, and reads as the value."""
    import html

    for code in (False, True):
        out = _rendered(f"x {md(s, code=code)} y")
        inner = re.fullmatch(r"<p>(.*)</p>\n", out, re.S)
        assert inner, out
        body = re.sub(r"</?code>", "", inner.group(1))
        assert "<" not in body.replace("&lt;", "")  # no tag but <code>
        assert html.unescape(body) == f"x {term(s)} y"
        table = _rendered(f"| h | k |\n|---|---|\n| {md(s, code=code)} | z |\n")
        assert table.count("<td>") == 2, table  # a | in the value did not add a cell


def test_md_block_cannot_be_closed_from_inside():
    out = _rendered("\n".join(md_block("a\n```\n# not a heading\n````x")) + "\n# after\n")
    assert out.count("<pre>") == 1 and "<h1>after</h1>" in out and "<h1>not" not in out


def _hostile_experiment(tmp_path, s):
    exp = fake_experiment(tmp_path)
    meta = experiment.read_meta(exp)
    meta["spec"]["space"]["model.complexity"] = {"choice": [s, "low"]}
    experiment.write_meta(exp, {**meta, "name": s, "data_dir": s, "created": s})
    params = json.loads((exp / "trial_c" / "params.json").read_text())
    params["model"]["complexity"] = s  # a value outside the space (export refuses it: trial c is not the best)
    (exp / "trial_c" / "params.json").write_text(json.dumps(params))
    import numpy as np

    labels = np.zeros(400, dtype=int)
    write_trial(exp, "h", Config().to_dict(), rows_with([0.3, 0.2], labels, labels))  # the best; hostile id below
    rows = (exp / "trial_h" / "result.json").read_text().replace('"trial_id": "h"', f'"trial_id": {json.dumps(s)}')
    (exp / "trial_h" / "result.json").write_text(rows)
    (exp / "trial_a" / "error.txt").write_text(f"Traceback\nValueError: {s}\n")
    return exp


@pytest.mark.parametrize("s", HOSTILE_TEXT)
def test_status_export_report_with_hostile_text(tmp_path, capsys, s):
    exp = _hostile_experiment(tmp_path, s)
    assert main(["status", str(exp)]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out) and term(s) in out
    table = out.split("\n")[out.split("\n").index(next(l for l in out.split("\n") if l.startswith("trial ")))+1:]
    assert len([l for l in table if l.strip()]) == 5  # one line per trial: a, b, c, old, and the hostile one

    assert main(["export", str(exp), "-o", str(tmp_path / "best.yaml")]) == 0
    out = capsys.readouterr().out
    assert not CONTROL.search(out) and f"best trial {term(s)} by val_loss: epoch 2" in out

    assert main(["report", str(exp)]) == 0
    text = (exp / "report.md").read_text()
    assert not CONTROL.search(text)
    html = _rendered(text)
    assert "<script" not in html and "<img" in html  # our figures only: the value's ![img] stayed text
    assert re.findall(r"<h1>(.*?)</h1>", html) == re.findall(r"<h1>(.*?)</h1>", _rendered(f"# Search report: {md(s)}"))
    assert len(re.findall(r"<h1>", html)) == 1
    heads = re.findall(r"<h2>(.*?)</h2>", html)
    assert heads == ["Best trial", "Learning curves", "Search progress", "Hyperparameter effects", "Trials"]
    assert html.count("<pre>") == 1  # the status table stayed one block
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        # the best trial's metrics table (one cell per metric) and the hyperparameter table (two cells per row)
        assert row.count("<td>") in (0, 2, len(M.VAL_METRICS))


@pytest.mark.parametrize("buffered", [True, False])  # output written at exit's flush, or by each print
@pytest.mark.parametrize("command", ["status", "export", "check-data"])
def test_closed_pipe_ends_quietly(tmp_path, demo_dir, command, buffered):
    """`mmsa status EXP | head -1`: no traceback, no 'Exception ignored' from the last flush. The reading end is
    closed before the command writes (it takes a second to start), so every write meets a closed pipe."""
    import os
    import subprocess
    import sys

    exp = fake_experiment(tmp_path)
    args = {"status": [str(exp)], "export": [str(exp), "-o", str(tmp_path / "b.yaml")],
            "check-data": [str(demo_dir)]}[command]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else {"PYTHONUNBUFFERED": "1"})
    p = subprocess.Popen([sys.executable, "-m", "search.cli", command, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141 and err == ""


@pytest.mark.parametrize("space", [{"nodot": {"choice": [1]}}, {"a.b.c": {"choice": [1]}}, {"train.lr": "x"},
                                   {"train.lr": {"loguniform": 5}}, {"train.lr": {"bogus": [1]}}, ["train.lr"]])
def test_hand_edited_space_in_metadata_is_one_error(tmp_path, capsys, space):
    """Before: IndexError/AttributeError tracebacks in status and report."""
    exp = fake_experiment(tmp_path)
    meta = experiment.read_meta(exp)
    experiment.write_meta(exp, {**meta, "spec": {**meta["spec"], "space": space}})
    for command in (["status", str(exp)], ["report", str(exp)], ["export", str(exp), "-o", str(tmp_path / "b.yaml")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {exp}/mmsa_search.yaml: spec.space entry") and err.count("\n") == 1


@pytest.mark.parametrize("key", sorted(experiment.REQUIRED_META))
@pytest.mark.parametrize("value", [None, ["x"], True])
def test_metadata_missing_or_mistyped_key_is_one_error(tmp_path, capsys, key, value):
    """Before: KeyError tracebacks in status and report for a metadata file without `name`, `data_dir` ..."""
    exp = fake_experiment(tmp_path)
    meta = experiment.read_meta(exp)
    meta = {k: v for k, v in meta.items() if k != key} if value is None else {**meta, key: value}
    experiment.write_meta(exp, meta)
    for command in (["status", str(exp)], ["report", str(exp)], ["export", str(exp), "-o", str(tmp_path / "b.yaml")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {exp}/mmsa_search.yaml: key {key!r} is missing") and err.count("\n") == 1
