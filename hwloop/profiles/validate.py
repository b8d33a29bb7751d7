"""Profile validation: every problem as one line naming the file, the line and the key.

jsonschema finds what breaks ``PROFILE_SCHEMA``; ``_explain`` turns each of
its errors into ``(line, key, message)`` a user can act on (the bench's
instrument files use it too), and ``_extra_checks`` adds what JSON Schema
cannot say (finite numbers, min < max, zero-free divisions).  The first
problem, by line, is raised as ``HwloopError('file:line: key: problem')``.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Iterator

from ..errors import HwloopError
from ..yamlio import line_of
from .schema import PROFILE_SCHEMA


def plain(obj: Any) -> Any:
    """JSON-friendly copy (dates to ISO strings, line-tracking dicts to plain dicts)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, (datetime.date, datetime.datetime)):
        return obj.isoformat()
    return obj


def validate(data: dict, label: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(PROFILE_SCHEMA)
    problems = []
    for err in validator.iter_errors(data):
        problems.extend(_explain(err, data))
    problems.extend(_extra_checks(data))
    if problems:
        line, key, msg = min(problems, key=lambda p: (p[0] if isinstance(p[0], int) else 10**9, p[1]))
        raise HwloopError(f"{label}:{line}: {key}: {msg}" if key else f"{label}:{line}: {msg}")


def _dotted(path: list) -> str:
    return ".".join(str(p) for p in path)


def _explain(err, data) -> Iterator[tuple]:
    """Turn one jsonschema error into (line, key, message) tuples a user can act on."""
    path = list(err.absolute_path)
    inst, v = err.instance, err.validator
    if v == "additionalProperties" and isinstance(inst, dict):
        known = list(err.schema.get("properties", {}))
        for k in inst:
            if k not in known:
                hint = f" (known: {', '.join(known)})" if known else ""
                yield line_of(data, path + [k]), _dotted(path + [k]), f"unknown key{hint}"
        return
    if v == "required":
        missing = [k for k in err.validator_value if k not in inst]
        for k in missing:
            yield getattr(_node(data, path), "line", 1), _dotted(path + [k]), "missing required key"
        return
    msg = {
        "type": lambda: f"must be {_types(err.validator_value)} (got {_show(inst)})",
        "minimum": lambda: f"must be >= {err.validator_value} (got {_show(inst)})",
        "maximum": lambda: f"must be <= {err.validator_value} (got {_show(inst)})",
        "enum": lambda: f"must be one of {', '.join(map(str, err.validator_value))} (got {_show(inst)})",
        "const": lambda: f"must be {err.validator_value} (got {_show(inst)})",
        "minItems": lambda: f"must have exactly 2 items [min, max] (got {_show(inst)})",
        "maxItems": lambda: f"must have exactly 2 items [min, max] (got {_show(inst)})",
    }.get(v, lambda: err.message)()
    yield line_of(data, path), _dotted(path), msg


def _node(data, path):
    for p in path:
        data = data[p]
    return data


def _types(t) -> str:
    names = {"number": "a number", "integer": "an integer", "string": "a string", "array": "a list",
             "object": "a mapping", "null": "null", "boolean": "true/false"}
    ts = t if isinstance(t, list) else [t]
    return " or ".join(names.get(x, x) for x in ts)


def _show(v: Any) -> str:
    return repr(plain(v)) if not isinstance(v, dict) else "a mapping"


def _extra_checks(data: dict) -> Iterator[tuple]:
    """What JSON Schema cannot say: finite numbers, min < max, zero-free divisions."""
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, path + [i])
        elif isinstance(node, float) and not math.isfinite(node):
            yield line_of(data, [p for p in path if not isinstance(p, int)]), _dotted(path), \
                f"must be a finite number (got {node})"

    yield from walk(data, [])
    scopes = [([], data)] + [(["layers", k], v) for k, v in (data.get("layers") or {}).items()
                             if isinstance(v, dict)]
    for prefix, scope in scopes:
        for conv in ("dac", "adc"):
            sec = scope.get(conv)
            if isinstance(sec, dict):
                r = sec.get("range")
                if isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r) \
                        and not r[0] < r[1]:
                    path = prefix + [conv, "range"]
                    yield line_of(data, path), _dotted(path), f"min must be below max (got {r})"
                top = data.get(conv) if prefix and isinstance(data.get(conv), dict) else {}
                if sec.get("bits") is not None and sec.get("range", top.get("range")) is None:
                    path = prefix + [conv, "bits"]
                    yield line_of(data, path), _dotted(path), "quantising needs a range [min, max] as well"
        w = scope.get("weights")
        if isinstance(w, dict) and isinstance(w.get("range"), (int, float)) and not isinstance(w.get("range"), bool) \
                and w["range"] <= 0:
            path = prefix + ["weights", "range"]
            yield line_of(data, path), _dotted(path), f"must be > 0 (got {w['range']})"
        t = scope.get("transfer")
        if isinstance(t, dict) and t.get("slope") == 0:
            path = prefix + ["transfer", "slope"]
            yield line_of(data, path), _dotted(path), "must not be 0"
