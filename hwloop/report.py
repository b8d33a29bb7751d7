"""One self-contained HTML page with inline figures, shared by every part of hwloop.

Other modules build ``Section`` objects (a title and an HTML fragment, usually
``figure_html(fig)`` plus a ``table_html``) and hand them to ``write_report``
with a ``summary`` (what ran, on which devices, the headline numbers) and,
where something passes or fails, a ``verdict``.  The page (the jinja2
template ``hwloop/templates/report.html.j2``) reads top-down: summary first,
then the sections; provenance sits in a collapsible table and a downloadable
JSON file.  Every figure is inline (SVG with a PNG fallback, see
``hwloop.plotting``); the page needs no network, scripts or style sheets from
anywhere else, so it can be mailed or archived.

    from hwloop.report import Section, figure_html, new_figure, table_html, write_report
    fig, ax = new_figure()
    ax.plot(...)
    write_report("report.html", "My run", [Section("Noise", figure_html(fig))],
                 provenance=run.attrs, summary=[("model", "demo.onnx")])
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .files import atomic_path
from .plotting import figure_html, new_figure  # noqa: F401  (the building blocks other modules import from here)


@dataclass
class Section:
    """One titled block of the page; ``html`` is a trusted fragment built with the helpers below.

    ``collapsed``: shown folded (a ``<details>``), for reference material such as per-neuron tables.
    """

    title: str
    html: str
    collapsed: bool = False


def table_html(rows: Iterable[Sequence[Any]], header: Sequence[str], fmt: str = "{:.4g}") -> str:
    """A plain HTML table; floats are formatted with ``fmt``, everything else with ``str``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return html.escape(fmt.format(v))
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def text_html(text: str, css: str | None = None) -> str:
    """A paragraph of plain text (escaped); ``css`` a class (``note`` for small print)."""
    cls = f' class="{css}"' if css else ""
    return f"<p{cls}>{html.escape(text)}</p>"


def download_html(filename: str, text: str, mime: str = "text/csv") -> str:
    """A link that downloads ``text`` as ``filename`` (an inline data URI: the page stays self-contained)."""
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f'<a class="download" download="{html.escape(filename)}" href="data:{mime};base64,{data}">' \
           f'{html.escape(filename)}</a>'


def csv_text(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """``rows`` as CSV (for ``download_html``)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def devices_text(devices: Sequence[dict]) -> str:
    """A run's devices in words, layers with the same device together: "layer 0: VisaDevice ...; layers 1, 2: ..."."""
    groups: dict[str, list[str]] = {}
    for d in devices:
        prof = d.get("profile")
        name = prof.get("name") if isinstance(prof, dict) else prof
        words = str(d.get("type", "device")) + (f" {d['idn']}" if d.get("idn") else "") \
            + (f" (profile {name})" if name else "")
        groups.setdefault(words, []).append(str(d.get("layer", "?")))
    return "; ".join(f"layer{'s' if len(v) > 1 else ''} {', '.join(v)}: {k}" for k, v in groups.items()) or "-"


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + " … (full text in provenance.json)"


def render_html(title: str, sections: Sequence[Section], provenance: dict | None = None,
                summary: Sequence[tuple[str, Any]] | None = None, verdict: bool | None = None,
                verdict_text: str = "", subtitle: str = "") -> str:
    """The whole page as a string (``write_report`` writes it)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("hwloop", "templates"), autoescape=select_autoescape(["j2", "html"]))
    prov = sorted((str(k), _short(v)) for k, v in (provenance or {}).items())
    prov_json = json.dumps(provenance or {}, indent=1, sort_keys=True, default=str)
    return env.get_template("report.html.j2").render(
        title=title, subtitle=subtitle, written=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        summary=[(str(k), str(v)) for k, v in (summary or [])], verdict=verdict, verdict_text=verdict_text,
        sections=[{"title": s.title, "html": s.html, "collapsed": getattr(s, "collapsed", False)} for s in sections],
        provenance=prov, provenance_json=base64.b64encode(prov_json.encode()).decode("ascii"))


def write_report(path: str | os.PathLike, title: str, sections: Sequence[Section],
                 provenance: dict | None = None, **page: Any) -> Path:
    """Write the page atomically (temporary file, then rename), so no half-written report is left.

    ``page``: ``summary`` [(label, value)], ``verdict`` (True pass / False fail), ``verdict_text``, ``subtitle``.
    """
    path = Path(path)
    text = render_html(title, sections, provenance, **page)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def analysis_sections(measured, predicted=None, max_scatter: int = 4000) -> list[Section]:
    """Sections for a measured analysis Dataset, optionally against ``predict`` (see hwloop.analysis.figures)."""
    from .analysis.figures import analysis_sections as sections

    return sections(measured, predicted, max_scatter)
