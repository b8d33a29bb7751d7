"""What CI systems read: one JUnit file (a test case per model x profile), a Markdown table, annotations.

A failed check is a JUnit ``failure``; an undecided one too (type
``Undecided``: the gate did not pass), so neither shows green.
GitHub-Actions annotations (``::error``/``::warning`` lines on stdout) are
printed when ``GITHUB_ACTIONS`` is ``true``; the Markdown table is appended
to ``GITHUB_STEP_SUMMARY`` when that is set.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Sequence

from ..files import atomic_path
from ..numbers import mean_sem
from .result import CheckResult

_MARK = {"pass": "✅ pass", "fail": "❌ fail", "undecided": "❔ undecided"}


def write_junit(results: Sequence[CheckResult], path: str | os.PathLike) -> None:
    fails = sum(r.decision != "pass" for r in results)
    suite = ET.Element("testsuite", name="hwloop check", tests=str(len(results)), failures=str(fails),
                       errors="0", skipped="0")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="hwloop.check", name=r.name)
        props = ET.SubElement(case, "properties")
        for k, v in _properties(r):
            ET.SubElement(props, "property", name=k, value=str(v))
        if r.decision != "pass":
            kind = "BarNotMet" if r.decision == "fail" else "Undecided"
            ET.SubElement(case, "failure", message=f"{r.decision}: {r.reason()}", type=kind).text = r.summary()
        ET.SubElement(case, "system-out").text = r.summary()
    with atomic_path(path) as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)


def _properties(r: CheckResult) -> list[tuple[str, object]]:
    props = [("model", r.model), ("profile", r.profile), ("profile_sha256", r.profile_sha256), ("data", r.data),
             ("decision", r.decision), ("repeats", r.repeats), ("seed", r.seed), ("method", r.method),
             ("confidence", r.confidence), ("scope", r.scope), ("clean_accuracy", f"{r.clean_accuracy:.6f}")]
    if r.accuracy.size:
        props += [("accuracy_mean", f"{r.mean:.6f}"), ("accuracy_std", f"{r.std:.6f}"),   # std: see ACCURACY_STD_NOTE
                  ("accuracy_std_between_repeats", f"{r.std:.6f}"), ("accuracy_sem", f"{mean_sem(r.accuracy)[1]:.6f}")]
    for b in r.bars:
        if b.estimate is not None:
            props += [(b.name, f"{b.estimate.value:.6f}"), (f"{b.name}_bound", f"{b.bound:.6f}"),
                      (f"{b.name}_bar", b.threshold)]
    return props


def markdown(results: Sequence[CheckResult]) -> str:
    """A table: one row per model x profile, one column per bar (value, bound, bar)."""
    names = list(dict.fromkeys(b.name for r in results for b in r.bars))
    head = ["model", "profile", "decision", "repeats"] + names
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by = {b.name: b for b in r.bars}
        cells = [os.path.basename(r.model), r.profile, _MARK[r.decision],
                 f"{r.repeats}" if r.method == "sampling" else "analytic"]
        for n in names:
            b = by.get(n)
            if b is None or b.estimate is None:
                cells.append("")
            else:
                op = ">=" if b.direction == "min" else "<="
                cells.append(f"{b.estimate.value:.4f} (bound {b.bound:.4f} {op} {b.threshold:.4f})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def annotations(results: Sequence[CheckResult]) -> list[str]:
    """``::error``/``::warning`` workflow commands for the checks that did not pass."""
    out = []
    for r in results:
        if r.decision != "pass":
            level = "error" if r.decision == "fail" else "warning"
            msg = f"{r.name}: {r.decision}: {r.reason()}".replace("%", "%25").replace("\n", "%0A")
            out.append(f"::{level} title=hwloop check::{msg}")
    return out


def publish(results: Sequence[CheckResult], environ=os.environ) -> None:
    """Annotations on stdout and the table in the job summary, when running under GitHub Actions."""
    if environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in annotations(results):
        print(line)
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write("## hwloop check\n\n" + markdown(results) + "\n")


def comparison(screen: CheckResult, sampled: CheckResult) -> str:
    """How the analytic screen of a pair compares with sampling it on the same data: per bar, both values,
    the gap, and the gap in standard errors of the sampled value (over repeats, on these samples)."""
    lines = [f"screen vs sampling: {screen.name}, {sampled.repeats} sampled repeats on the same data"]
    for a, b in zip(screen.bars, sampled.bars):
        gap, se = a.estimate.value - b.estimate.value, b.estimate.se
        in_se = f" ({gap / se:+.1f} s.e.)" if se > 0 else ""
        lines.append(f"  {a.name}: screen {a.estimate.value:.4f}, sampled {b.estimate.value:.4f} ± {se:.4f} "
                     f"(s.e.): gap {gap:+.4f}{in_se}")
    return "\n".join(lines)
