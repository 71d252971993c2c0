"""The one YAML reader for files a user hands us (run configs, search spaces, `mmsa export` files, `--set` values).

yaml.safe_load refuses Python objects but not size: a few hundred bytes of nested anchors and aliases (the
"billion laughs") expand into billions of values, and the first error message that prints them runs out of
memory. So the text is capped, and the document is composed first and its size after alias expansion counted
before any Python object is built. A config needs neither many nodes nor aliases; both limits are far above any
real file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB; the largest real config is a few KiB
MAX_NODES = 100_000  # scalars, lists and mappings after expanding aliases


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes after alias expansion (aliases share node objects in the composed graph: memoised, so cheap)."""
    memo: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in on_path:
            raise UserError(f"{source}: a YAML alias refers to a node that contains it (a cycle); write the values out.")
        on_path.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        on_path.discard(key)
        memo[key] = n
        if n > MAX_NODES:
            raise UserError(f"{source}: YAML expands to more than {MAX_NODES} values (anchors/aliases nested into each "
                            "other?); a config file needs a few dozen. Write the values out without aliases.")
        return n

    return size(root)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with the safe loader, refusing oversized documents; errors name `source`."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{source}: {len(text)} characters of YAML; a config is a few KiB (limit {MAX_BYTES} bytes).")
    try:
        loader = yaml.SafeLoader(text)  # checks the characters already: a binary file is refused here
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({str(e)[:500]}).") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        msg = str(e)
        raise UserError(f"{source}: not valid YAML ({msg[:500]}).") from None
    except RecursionError:
        raise UserError(f"{source}: YAML nested too deeply.") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Read a YAML file a user gave: missing, a folder, too big, not text and not YAML are each a UserError."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a YAML {what}.")
    if not p.is_file():
        raise UserError(f"{p}: {what} not found.")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{p}: {size} bytes; a YAML {what} is a few KiB (limit {MAX_BYTES} bytes). Wrong file?")
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a YAML {what}.") from None
    return load_yaml_text(text, str(p))
