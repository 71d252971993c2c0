"""Label files: `guid,tag` CSV (`train.txt`), or `guid,null` for the test file.

Guids stay the integer strings they are: the lab read them with pandas and got floats (`8.0.txt`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# Index order of the classes in logits and predictions; files use the names.
LABELS = ("positive", "neutral", "negative")
LABEL_TO_ID = {name: i for i, name in enumerate(LABELS)}
NULL_TAG = "null"
HEADER = ("guid", "tag")
_GUID = re.compile(r"[0-9]+")
MAX_GUID_DIGITS = 255 - len(".jpg")  # data/{guid}.jpg must be a possible file name


@dataclass(frozen=True)
class LabelRow:
    guid: str
    tag: str | None  # None for the test file's `null`
    line: int


def read_label_file(path: str | Path, *, test: bool = False) -> list[LabelRow]:
    """Read and validate a label file; any problem is one UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label file not found. Expected `guid,tag` lines (see README, 'Your own data').")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8/ASCII text file ({e.reason} at byte {e.start}).") from None
    lines = text.splitlines()
    if not lines or not any(l.strip() for l in lines):
        raise UserError(f"{path}: file is empty; expected a `guid,tag` header and one row per sample.")
    header = tuple(c.strip().lower() for c in lines[0].split(","))
    if header != HEADER:
        raise UserError(f"{path}:1: header is {lines[0].strip()!r}, expected 'guid,tag'.")
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise UserError(f"{path}:{lineno}: malformed line {line.strip()!r}; expected exactly `guid,tag`.")
        guid, tag = parts
        if not _GUID.fullmatch(guid):
            raise UserError(
                f"{path}:{lineno}: guid {guid!r} is not a plain non-negative integer "
                "(guids name files data/{guid}.txt and .jpg; a value like '8.0' means the file was saved "
                "by a tool that turned guids into floats)."
            )
        if len(guid) > MAX_GUID_DIGITS:
            raise UserError(f"{path}:{lineno}: guid of {len(guid)} digits ({guid[:12]}...); its files data/{{guid}}.txt "
                            f"and .jpg cannot exist (a file name has at most 255 bytes). Guids have at most "
                            f"{MAX_GUID_DIGITS} digits.")
        if guid in seen:
            raise UserError(f"{path}:{lineno}: duplicate guid {guid} (first on line {seen[guid]}).")
        seen[guid] = lineno
        tag_l = tag.lower()
        if test:
            if tag_l not in (NULL_TAG, ""):
                raise UserError(f"{path}:{lineno}: test file tag {tag!r}; expected the literal 'null'.")
            rows.append(LabelRow(guid, None, lineno))
        else:
            if tag_l not in LABEL_TO_ID:
                raise UserError(
                    f"{path}:{lineno}: unknown tag {tag!r}; expected one of {', '.join(LABELS)}."
                )
            rows.append(LabelRow(guid, tag_l, lineno))
    if not rows:
        raise UserError(f"{path}: has a header but no rows.")
    return rows
