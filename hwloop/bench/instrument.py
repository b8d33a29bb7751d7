"""Declarative instruments: a controller dialect described in YAML, read by one driver and one simulator.

A description (``hwloop/bench/instruments/*.yaml``, schema
``hwloop/schema/instrument.schema.json``) says how a controller is identified
and reset, its capacity and ranges, how weights, bias and activation are
programmed (ASCII lists, row or column order), how inputs are written and a
measurement triggered, how to wait for it (poll a status query, ``*OPC?``, or a
fixed delay), how results come back (ASCII, in which order of repeat, sample
and neuron), and the error query with its reply format.  ``Description`` is
the one command table: ``hwloop.bench.described.DescribedDevice`` (the
driver) formats commands and parses replies with it, and
``hwloop.bench.described_server`` (the simulated controller) parses and
answers the same commands.  Errors name the file, the line and the key.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HwloopError
from ..yamlio import load_yaml_file

SCHEMA = json.loads((Path(__file__).parent.parent / "schema" / "instrument.schema.json").read_text())
#: descriptions shipped with hwloop, by name
SHIPPED = Path(__file__).with_name("instruments")
_CAPACITY = ("max_inputs", "max_outputs", "max_batch", "max_repeats")


@dataclass(frozen=True)
class Description:
    """A validated instrument description (see the module docstring); ``data`` as written."""

    path: Path
    data: dict

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def separator(self) -> str:
        return (self.data.get("data") or {}).get("separator", ",")

    @property
    def digits(self) -> int:
        return (self.data.get("data") or {}).get("digits", 9)

    def section(self, key: str) -> dict:
        return self.data.get(key) or {}

    @property
    def block(self) -> bool:
        """Whether arrays travel as IEEE 488.2 binary blocks of float32 (else ASCII lists)."""
        return self.section("data").get("format", "ascii") == "block"

    def limits(self) -> dict:
        """Capacity and ranges as ``hwloop.bench.plan`` reads them (activations by hwloop name); what the
        description has the driver query (``capacity: {query:}``, ``ranges: {query:}``) is None here."""
        r = self.data["ranges"]

        def fixed(key, cast):
            return None if key not in r else cast(r[key])

        return {**{k: self.data["capacity"].get(k) for k in _CAPACITY},
                "weight_range": fixed("weights", float), "bias_range": fixed("bias", float),
                "input_range": fixed("inputs", lambda v: tuple(map(float, v))),
                "output_range": fixed("outputs", lambda v: tuple(map(float, v))),
                "output_bits": r.get("output_bits"), "activations": set(self.data["activations"])}

    @property
    def instruments(self) -> list[str]:
        """The roles of the bench's instruments (one controller, or e.g. source and measure)."""
        return list(self.data.get("instruments") or ["controller"])

    def role(self, template: str) -> tuple[str | None, str]:
        """``"measure> ACQ:DATA?"`` -> ("measure", "ACQ:DATA?"); no prefix -> (None, template): every instrument."""
        head, sep, rest = template.partition("> ")
        return (head, rest) if sep and head in self.instruments else (None, template)

    # -- the command table -----------------------------------------------------------
    def message(self, template: str, **fields) -> tuple[str | None, str]:
        """(role, program message) from ``template`` ({values} is an ASCII list, others as given)."""
        if "values" in fields:
            fields["values"] = self.format_values(fields["values"])
        role, text = self.role(template)
        return role, text.format(**fields)

    def head(self, template: str, **fields) -> tuple[str | None, str]:
        """(role, program message up to ``{values}``): the driver appends the values (ASCII or a block)."""
        role, text = self.role(template)
        return role, text.partition("{values}")[0].format(**fields)

    def header(self, template: str) -> str:
        """The command's header, for messages: ``"measure> ACQ:COUN {k}"`` -> ``ACQ:COUN``."""
        return self.role(template)[1].split(" ")[0]

    def numbers(self, text: str) -> tuple[float, ...]:
        """A short reply of numbers (capacity, a range, a shape) split at the separator or a comma."""
        sep = self.separator if self.separator in text else ","
        return tuple(float(v) for v in text.split(sep))

    def format_values(self, values: np.ndarray) -> str:
        """An ASCII list (``digits`` significant digits, ``separator`` between values)."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
        if not flat:
            return ""
        return ((f"%.{self.digits}g" + self.separator) * len(flat) % tuple(flat))[:-len(self.separator)]

    def parse_values(self, text: str) -> np.ndarray:
        """An ASCII list as float32; ValueError when it is not one.

        Long lists go through pandas' C reader (~3x numpy's ``fromstring``, which is ~190 ns a
        value): reading replies is what limits an ASCII dialect's throughput.
        """
        text = text.strip()
        if not text:
            return np.empty(0, np.float32)
        if len(text) > 16384:
            return _parse_long(text, self.separator)
        with warnings.catch_warnings():           # numpy warns, then stops, at the first non-number
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(text, dtype=np.float64, sep=self.separator)
        if values.size != text.count(self.separator) + 1:
            raise ValueError(f"not a list of numbers separated by {self.separator!r}: {text[:40]!r}")
        return values.astype(np.float32)

    @staticmethod
    def pattern(template: str) -> re.Pattern:
        """The regular expression that reads a message written with ``template`` (fields as groups)."""
        parts = re.split(r"\{(\w+)(?::[^}]*)?\}", template)
        rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*?)" for i, p in enumerate(parts))
        return re.compile(f"^{rx}$", re.S)

    def error(self, reply: str) -> tuple[int, str] | None:
        """The error in a reply to the error query: None for ``none``; (code, text) otherwise."""
        e = self.data["errors"]
        if reply.strip() == e["none"]:
            return None
        m = self.pattern(e["format"]).match(reply.strip())
        if not m:
            raise ValueError(f"{e['query']} answered {reply[:60]!r}, not {e['format']!r}")
        return int(m["code"]), m["text"]


def _parse_long(text: str, separator: str) -> np.ndarray:
    """A long ASCII list, one value a line for pandas' C float reader (exact for float32 values)."""
    import io

    import pandas as pd

    lines = text.replace(separator, "\n") if separator != "\n" else text
    try:
        frame = pd.read_csv(io.StringIO(lines), header=None, dtype=np.float64, na_filter=False, engine="c",
                            skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError):
        raise ValueError(f"not a list of numbers separated by {separator!r}: {text[:40]!r}") from None
    if frame.shape[1] != 1 or len(frame) != text.count(separator) + 1:
        raise ValueError(f"not a list of numbers separated by {separator!r}: {text[:40]!r}")
    return frame.to_numpy(np.float32).reshape(-1)


def load_description(name_or_path: str | Path) -> Description:
    """A shipped description by name (``acme-nc``) or a YAML file; HwloopError ``FILE:LINE: key: problem``."""
    import jsonschema

    from ..profiles import _explain      # the profiles' translation of schema errors to file, line and key

    path = Path(name_or_path)
    if not path.suffix and (SHIPPED / f"{path}.yaml").is_file():
        path = SHIPPED / f"{path}.yaml"
    data = load_yaml_file(path, "instrument description")
    if not isinstance(data, dict):
        raise HwloopError(f"{path}:1: an instrument description is a mapping (see {SHIPPED / 'acme-nc.yaml'})")
    problems = [p for err in jsonschema.Draft202012Validator(SCHEMA).iter_errors(data) for p in _explain(err, data)]
    cap = data.get("capacity") if isinstance(data.get("capacity"), dict) else {}
    if not problems and "query" not in cap and any(k not in cap for k in _CAPACITY):
        problems.append((getattr(cap, "line", 1), "capacity", f"give query: or all of {', '.join(_CAPACITY)}"))
    ranges = data.get("ranges") if isinstance(data.get("ranges"), dict) else {}
    queried = ranges.get("query") if isinstance(ranges.get("query"), dict) else {}
    if not problems and any(k not in ranges and k not in queried for k in ("weights", "bias", "inputs", "outputs")):
        problems.append((getattr(ranges, "line", 1), "ranges", "give weights:, bias:, inputs: and outputs: "
                                                               "(or each under query:)"))
    wait = (data.get("measure") or {}).get("wait") if isinstance(data.get("measure"), dict) else None
    if not problems and isinstance(wait, dict) and sum(k in wait for k in ("poll", "opc", "delay_s")) != 1:
        problems.append((getattr(wait, "line", 1), "measure.wait", "exactly one of poll:, opc:, delay_s:"))
    problems += [] if problems else _consistency(data)
    if problems:
        line, key, msg = min(problems, key=lambda p: (p[0] if isinstance(p[0], int) else 10**9, p[1]))
        raise HwloopError(f"{path}:{line}: {key}: {msg}")
    return Description(path, data)


def _consistency(data: dict) -> list[tuple]:
    """What the schema cannot say: roles that exist, and a program that either loads weights or reads fixed ones."""
    out = []
    roles = set(data.get("instruments") or ["controller"])

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for v in node:
                walk(v, path)
        elif isinstance(node, str) and "{values}" in node and not node.rstrip().endswith("{values}"):
            out.append((_line(data, path), ".".join(path), "{values} must end the message"))
        elif isinstance(node, str) and "> " in node and path and path[0] in ("program", "measure", "errors"):
            head = node.partition("> ")[0]
            if head.isidentifier() and head not in roles:
                out.append((_line(data, path), ".".join(path), f"no instrument {head!r} (instruments: "
                                                               f"{', '.join(sorted(roles))})"))

    walk(data, [])
    prog = data.get("program") or {}
    if "fixed" not in prog and any(k not in prog for k in ("weights", "bias", "activation")):
        out.append((getattr(prog, "line", 1) or 1, "program", "give weights:, bias: and activation:, or fixed: "
                                                              "(a query for weights set in the hardware)"))
    return out


def _line(data, path) -> int:
    node, line = data, getattr(data, "line", 1)
    for p in path:
        line = getattr(node, "lines", {}).get(p, line)
        node = node[p] if isinstance(node, dict) else node
    return line
