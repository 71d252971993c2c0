import pytest

from data_pipeline.errors import UserError
from data_pipeline.labels import read_label_file


def _write(tmp_path, text, name="train.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_guids_stay_integer_strings(tmp_path):
    rows = read_label_file(_write(tmp_path, "guid,tag\n8,positive\n0010,negative\r\n12,neutral\n"))
    assert [r.guid for r in rows] == ["8", "0010", "12"]  # never 8.0, never 10
    assert [r.tag for r in rows] == ["positive", "negative", "neutral"]
    assert rows[1].line == 3


def test_test_file_null_tags(tmp_path):
    rows = read_label_file(_write(tmp_path, "guid,tag\n5,null\n6,null\n"), test=True)
    assert [(r.guid, r.tag) for r in rows] == [("5", None), ("6", None)]


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "file is empty"),
        ("id,label\n1,positive\n", "train.txt:1: header is 'id,label', expected 'guid,tag'"),
        ("guid,tag\n1,positive\n2,happy\n", "train.txt:3: unknown tag 'happy'"),
        ("guid,tag\n1,positive\n1,negative\n", "train.txt:3: duplicate guid 1 (first on line 2)"),
        ("guid,tag\n1.0,positive\n", "train.txt:2: guid '1.0' is not a plain non-negative integer"),
        ("guid,tag\n../x,positive\n", "train.txt:2: guid '../x' is not a plain non-negative integer"),
        ("guid,tag\n-3,positive\n", "guid '-3' is not a plain non-negative integer"),
        ("guid,tag\n1,positive,extra\n", "train.txt:2: malformed line '1,positive,extra'"),
        ("guid,tag\n", "has a header but no rows"),
    ],
)
def test_bad_label_files_name_file_and_line(tmp_path, content, expected):
    with pytest.raises(UserError) as e:
        read_label_file(_write(tmp_path, content))
    assert expected in str(e.value)
    assert "train.txt" in str(e.value)


def test_missing_label_file(tmp_path):
    with pytest.raises(UserError, match="label file not found"):
        read_label_file(tmp_path / "train.txt")


def test_test_file_rejects_real_tags(tmp_path):
    with pytest.raises(UserError, match="expected the literal 'null'"):
        read_label_file(_write(tmp_path, "guid,tag\n1,positive\n", "test_without_label.txt"), test=True)
