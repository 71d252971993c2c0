"""Demo data with label noise (bench/search_efficiency.py --heldout): same content, a share of labels changed."""
import pytest

from data_pipeline.demo_data import make_demo_data
from data_pipeline.errors import UserError


def _labels(d):
    return [l.split(",") for l in (d / "train.txt").read_text().splitlines()[1:]]


def test_label_noise_changes_about_that_share_and_nothing_else(tmp_path):
    make_demo_data(tmp_path / "clean", n=400, seed=3)
    make_demo_data(tmp_path / "noisy", n=400, seed=3, label_noise=0.25)
    clean, noisy = _labels(tmp_path / "clean"), _labels(tmp_path / "noisy")
    assert [g for g, _ in clean] == [g for g, _ in noisy]
    changed = sum(a != b for (_, a), (_, b) in zip(clean, noisy))
    assert 70 <= changed <= 130
    for f in ("data/" + clean[0][0] + ".txt", "test_without_label.txt"):
        assert (tmp_path / "clean" / f).read_bytes() == (tmp_path / "noisy" / f).read_bytes()


def test_label_noise_range(tmp_path):
    with pytest.raises(UserError, match="label_noise"):
        make_demo_data(tmp_path / "x", n=10, label_noise=1.0)
