"""Safe YAML loading that remembers line numbers, for ``FILE:LINE: key: problem`` errors.

Used for profiles and bench files.  Only ``yaml.SafeLoader`` constructs are
read.  Every mapping comes back as a ``LineMap`` (a ``dict`` that knows the
line of itself and of each key); duplicate keys are refused.  Numbers such as
``1e-3`` (no dot, which YAML 1.1 reads as text) are floats, and dates stay
text.

Bounded: a document is refused when its aliases would expand it beyond
``MAX_NODES`` nodes (the "billion laughs": a 1 KB file of nested aliases that
validation would walk for minutes), when an alias refers to itself, when it is
nested too deeply, or when the text is longer than ``MAX_CHARS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import HwloopError

__all__ = ["LineMap", "load_yaml", "load_yaml_file", "line_of", "MAX_NODES", "MAX_CHARS"]

#: most nodes a document may have with every alias expanded (profiles and bench files have hundreds)
MAX_NODES = 20_000
#: longest YAML text read (characters)
MAX_CHARS = 4 << 20


class LineMap(dict):
    """A mapping that remembers the line (1-based) of itself and of each key."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.lines: dict = {}

    def line_of(self, key) -> int:
        """The line of ``key``, or of the mapping itself when the key is absent."""
        return self.lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers of mapping keys and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        out = LineMap()
        out.line = node.start_mark.line + 1
        out.lines = {}
        for knode, vnode in node.value:
            key = self.construct_object(knode, deep=True)
            if key in out:
                raise HwloopError(f"{self.name}:{knode.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = self.construct_object(vnode, deep=True)
            out.lines[key] = knode.start_mark.line + 1
        return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)
# YAML 1.1 reads ``1e-3`` (no dot) as a string; profiles are full of such numbers, so read them as floats.
# Dates stay strings (``date: 2026-01-31`` is text in a profile, not a datetime object).
_LineLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str, label: str) -> Any:
    """Parse one YAML document safely; mappings become ``LineMap``.

    ``label`` (usually the file name) starts every error: a syntax error raises
    ``HwloopError("LABEL:LINE: not valid YAML: ...")``, a duplicate key
    ``HwloopError("LABEL:LINE: duplicate key 'k'")``.
    """
    if len(text) > MAX_CHARS:
        raise HwloopError(f"{label}: {len(text)} characters, more than a settings file may have ({MAX_CHARS})")
    loader = _LineLoader(text)
    loader.name = label
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, label)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise HwloopError(f"{label}:{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise HwloopError(f"{label}: nested too deeply to be a settings file") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict, label: str) -> int:
    """Nodes in ``node`` with every alias expanded (an alias is the same node object as its anchor,
    so each distinct node is counted once here); HwloopError beyond MAX_NODES or on a cycle."""
    key = id(node)
    if key in sizes:
        if sizes[key] is None:
            raise HwloopError(f"{label}:{node.start_mark.line + 1}: an alias refers to the node it is in")
        return sizes[key]
    sizes[key] = None
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(c, sizes, label) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, sizes, label) + _expanded_size(v, sizes, label) for k, v in node.value)
    else:
        n = 1
    if n > MAX_NODES:
        raise HwloopError(f"{label}:{node.start_mark.line + 1}: aliases expand this document beyond {MAX_NODES} "
                          "values (nested aliases, a \"billion laughs\"?); write the values out instead")
    sizes[key] = n
    return n


def load_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """``load_yaml`` of a file's text; an unreadable file raises ``HwloopError("PATH: cannot read WHAT: ...")``."""
    try:
        if Path(path).stat().st_size > 4 * MAX_CHARS:
            raise HwloopError(f"{path}: too large to be a {what} ({Path(path).stat().st_size} bytes)")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HwloopError(f"{path}: cannot read {what}: {e}") from None
    return load_yaml(text, str(path))


def line_of(data: Any, path: list) -> int:
    """Line of the last key in ``path`` through nested mappings and lists (falls back to the innermost mapping's line)."""
    node, line = data, getattr(data, "line", 1)
    for part in path:
        if isinstance(node, LineMap):
            line = node.lines.get(part, node.line)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line
