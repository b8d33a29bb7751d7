"""The ANB-series SCPI command set (../shared/bench/SCPI.md), declared once.

Both sides read this table: the driver (``driver.py``) formats and parses
commands by name, and the simulated controller (``server.py``) matches
incoming headers and checks parameters against it.  Header patterns are
written as in the manual: upper case is the short form, ``[...]`` optional.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# -- errors (manual section 7) -------------------------------------------------------
ERRORS: dict[int, str] = {
    0: "No error",
    -102: "Syntax error",
    -109: "Missing parameter",
    -113: "Undefined header",
    -161: "Invalid block data",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
}
ERROR_QUEUE_MAX = 32

#: SCPI mnemonics of the neuron transfer functions -> hwloop activation names
ACTIVATIONS = {"SIGMoid": "sigmoid", "TANH": "tanh", "RELU": "relu", "LINear": "linear"}


@functools.lru_cache(maxsize=None)
def short(mnemonic: str) -> str:
    """Short form of a mnemonic: its upper-case part (``WEIGhts`` -> ``WEIG``)."""
    return "".join(c for c in mnemonic if not c.islower())


def mnemonic_matches(mnemonic: str, word: str) -> bool:
    """True when ``word`` is the short or the long form of ``mnemonic`` (any case)."""
    w = word.upper()
    return w == short(mnemonic).upper() or w == mnemonic.upper()


# -- parameters ---------------------------------------------------------------------
class ParamError(ValueError):
    """A parameter that cannot be accepted; ``code`` is the SCPI error to queue."""

    def __init__(self, code: int, detail: str):
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is int, float, choice or block.

    ``lo``/``hi`` are numbers or names of limits (``"max_inputs"``) resolved
    against the chip's capacity and ranges at call time.
    """

    name: str
    kind: str
    lo: float | str | None = None
    hi: float | str | None = None
    choices: tuple[str, ...] = ()

    def bounds(self, limits: dict) -> tuple[float | None, float | None]:
        def get(v):
            return limits.get(v) if isinstance(v, str) else v
        return get(self.lo), get(self.hi)

    def parse(self, text: str, limits: dict) -> Any:
        """Server side: text -> value, raising ParamError(-102/-222)."""
        text = text.strip()
        if self.kind == "choice":
            for c in self.choices:
                if mnemonic_matches(c, text):
                    return short(c).upper()
            raise ParamError(-222, f"{self.name}: {text!r} is not one of {', '.join(self.choices)}")
        try:
            value: Any = float(text) if self.kind == "float" else int(text, 10)
        except ValueError:
            raise ParamError(-102, f"{self.name}: {text!r} is not a{'n integer' if self.kind == 'int' else ' number'}") from None
        self.check(value, limits, code=-222)
        return value

    def format(self, value: Any, limits: dict) -> str:
        """Driver side: value -> text, after the same range check."""
        if self.kind == "choice":
            for c in self.choices:
                if mnemonic_matches(c, str(value)):
                    return short(c).upper()
            raise ParamError(-222, f"{self.name}: {value!r} is not one of {', '.join(self.choices)}")
        self.check(value, limits, code=-222)
        return str(int(value)) if self.kind == "int" else f"{float(value):.9g}"

    def check(self, value: float, limits: dict, code: int) -> None:
        lo, hi = self.bounds(limits)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ParamError(code, f"{self.name}={value} outside [{lo}, {hi}]")


# -- response parsers ---------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _error(text: str) -> tuple[int, str]:
    code, _, msg = text.partition(",")
    return int(code), msg.strip().strip('"')


# -- commands -----------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One program message or query, e.g. ``Command("shape", "LAYer:SHAPe", ...)``."""

    name: str                                  # what the driver calls it
    header: str                                # as in the manual, without "?"
    query: bool = False
    params: tuple[Param, ...] = ()
    parse: Callable[[str], Any] | None = None  # text response -> value; None: binary block
    overlapped: bool = False                   # finishes later: wait with *OPC?
    nodes: tuple[tuple[str, bool], ...] = field(init=False, repr=False)

    def __post_init__(self):
        nodes = []
        for m in re.finditer(r"(\[)?:?([*A-Za-z]+)\]?", self.header):
            nodes.append((m.group(2), bool(m.group(1))))
        object.__setattr__(self, "nodes", tuple(nodes))

    @property
    def short_header(self) -> str:
        """The header the driver sends: short forms, optional nodes left out."""
        return ":".join(short(n) for n, opt in self.nodes if not opt) + ("?" if self.query else "")

    def matches(self, words: list[str]) -> bool:
        """Server side: do the header's ``:``-separated words name this command?"""
        def match(i: int, j: int) -> bool:
            if j == len(self.nodes):
                return i == len(words)
            node, optional = self.nodes[j]
            if i < len(words) and mnemonic_matches(node, words[i]) and match(i + 1, j + 1):
                return True
            return optional and match(i, j + 1)
        return match(0, 0)

    def message(self, args: tuple, limits: dict) -> str:
        """Driver side: the text of the message (blocks are appended by the caller)."""
        text = [p.format(a, limits) for p, a in zip(self.params, args) if p.kind != "block"]
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} parameter(s), got {len(args)}")
        return self.short_header + (" " + ",".join(text) if text else "")


def _p(name, kind, lo=None, hi=None, choices=()):
    return Param(name, kind, lo, hi, choices)


_BLOCK = (_p("data", "block"),)
COMMANDS: dict[str, Command] = {c.name: c for c in (
    # common commands (section 3)
    Command("idn", "*IDN", query=True, parse=str),
    Command("rst", "*RST"),
    Command("cls", "*CLS"),
    Command("opc", "*OPC", query=True, parse=int),
    Command("wai", "*WAI"),
    Command("esr", "*ESR", query=True, parse=int),
    Command("stb", "*STB", query=True, parse=int),
    # system (section 4)
    Command("error", "SYSTem:ERRor[:NEXT]", query=True, parse=_error),
    Command("error_count", "SYSTem:ERRor:COUNt", query=True, parse=int),
    Command("capacity", "SYSTem:CAPacity", query=True, parse=_ints),
    Command("temperature", "SYSTem:TEMPerature", query=True, parse=float),
    Command("byte_order", "FORMat:BORDer", params=(_p("order", "choice", choices=("NORMal", "SWAPped")),)),
    Command("byte_order?", "FORMat:BORDer", query=True, parse=str),
    # layer programming (section 5)
    Command("shape", "LAYer:SHAPe", params=(_p("n_out", "int", 1, "max_outputs"), _p("n_in", "int", 1, "max_inputs"))),
    Command("shape?", "LAYer:SHAPe", query=True, parse=_ints),
    Command("weights", "WEIGhts[:DATA]", params=_BLOCK, overlapped=True),
    Command("weights?", "WEIGhts[:DATA]", query=True),
    Command("checksum", "WEIGhts:CHECksum", query=True, parse=str),
    Command("weight_range", "WEIGhts:RANGe", query=True, parse=float),
    Command("bias", "BIAS[:DATA]", params=_BLOCK),
    Command("bias?", "BIAS[:DATA]", query=True),
    Command("bias_range", "BIAS:RANGe", query=True, parse=float),
    Command("activation", "ACTivation[:FUNCtion]", params=(_p("name", "choice", choices=tuple(ACTIVATIONS)),)),
    Command("activation?", "ACTivation[:FUNCtion]", query=True, parse=str),
    Command("catalog", "ACTivation:CATalog", query=True, parse=lambda t: tuple(t.split(","))),
    # measurement (section 6)
    Command("input_range", "INPut:RANGe", query=True, parse=_floats),
    Command("input", "INPut[:DATA]", params=_BLOCK),
    Command("count", "SAMPle:COUNt", params=(_p("k", "int", 1, "max_repeats"),)),
    Command("count?", "SAMPle:COUNt", query=True, parse=int),
    Command("initiate", "INITiate", overlapped=True),
    Command("abort", "ABORt"),
    Command("fetch", "FETCh", query=True),
    Command("fetch_shape", "FETCh:SHAPe", query=True, parse=_ints),
    Command("output_range", "OUTPut:RANGe", query=True, parse=_floats),
    Command("output_bits", "OUTPut:BITS", query=True, parse=int),
    Command("operation", "STATus:OPERation:CONDition", query=True, parse=int),
    Command("questionable", "STATus:QUEStionable:CONDition", query=True, parse=int),
)}

#: status bits (section 6)
OPER_PROGRAMMING, OPER_MEASURING = 1, 16
QUES_CLIPPED, QUES_TEMPERATURE = 1, 2
STB_ERROR_QUEUE = 4


#: longest header the controller looks up (the longest long form is 30 characters)
MAX_HEADER = 64
_FOUND: dict[str, Command] = {}   # upper-cased spellings of known headers: a finite set, so bounded


def find_command(header: str) -> Command | None:
    """Server side: the command a received header names (``weights:data?`` -> weights?).

    Only headers that name a command are remembered (their spellings are finitely many), so a
    client sending endless distinct unknown headers cannot grow the controller's memory.
    """
    key = header.upper()
    found = _FOUND.get(key)
    if found is not None or len(key) > MAX_HEADER:
        return found
    query = key.endswith("?")
    words = key[:-1 if query else None].lstrip(":").split(":")
    for c in COMMANDS.values():
        if c.query == query and c.matches(words):
            _FOUND[key] = c
            return c
    return None


# -- binary blocks (section 2) ------------------------------------------------------
def block_dtype(order: str) -> np.dtype:
    """float32 of the byte order named by FORM:BORD (``NORM`` big-endian, ``SWAP`` little)."""
    return np.dtype("<f4") if order == "SWAP" else np.dtype(">f4")


def block_header(n_bytes: int) -> bytes:
    """``#<N><count>`` for a definite-length block of ``n_bytes``."""
    digits = str(n_bytes)
    if len(digits) > 9:
        raise ValueError(f"block of {n_bytes} bytes is too large for a definite-length header")
    return f"#{len(digits)}{digits}".encode()


def block_array(values: np.ndarray, order: str) -> np.ndarray:
    """The payload of a block as an array of float32 in the given byte order (no copy when it already is)."""
    return np.ascontiguousarray(values, dtype=block_dtype(order))


def encode_block(values: np.ndarray, order: str) -> bytes:
    """Array -> header + float32 bytes in the given byte order (no terminator)."""
    data = block_array(values, order).tobytes()
    return block_header(len(data)) + data


def decode_floats(data: bytes, order: str) -> np.ndarray:
    """Block payload -> float32 array in native byte order (a read-only view when no swap is needed)."""
    return np.frombuffer(data, dtype=block_dtype(order)).astype(np.float32, copy=False)


def weights_checksum(weights: np.ndarray) -> str:
    """What ``WEIG:CHEC?`` answers: CRC-32 of the little-endian float32 bytes, 8 hex digits."""
    data = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}" if data else "00000000"
