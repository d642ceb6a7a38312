"""Findings as Markdown built from a run's own numbers: one short paragraph per finding, the paper's claim
beside ours, and a closing list of the tables, figures and pages a notebook wrote."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .paths import resolve

VERDICTS = ("agrees", "partly", "disagrees", "not testable here", "our addition")


@dataclass(frozen=True)
class Finding:
    """One finding: `title` the claim in a few words; `ours` what this run measured (every number formatted
    from the run's tables, never typed in); `paper` the paper's claim in words (its numbers are the
    paper's); `verdict` one of VERDICTS, or "" where the finding has no paper to compare with."""
    title: str
    ours: str
    paper: str = ""
    verdict: str = ""

    def __post_init__(self):
        if not self.title.strip() or not self.ours.strip():
            raise ValueError("a Finding needs a title and what this run measured (ours)")
        if self.verdict and self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: use one of {VERDICTS} or ''")

    def markdown(self) -> str:
        text = f"**{self.title.strip().rstrip('.')}.** "
        if self.paper:
            text += f"*The paper:* {self.paper.strip()} *Here:* "
        text += self.ours.strip()
        if self.verdict:
            text += f" — **{self.verdict}**."
        return " ".join(text.split())   # one paragraph: no hard wraps, Markdown reflows it


def to_markdown(findings: list[Finding | str], heading: str | None = None) -> str:
    """The findings as Markdown paragraphs (a str item is a paragraph as it is: a caveat, a note)."""
    if not findings:
        raise ValueError("no findings to show: the run produced no rows (see the tables above)")
    paras = [f.markdown() if isinstance(f, Finding) else " ".join(str(f).split()) for f in findings]
    return "\n\n".join(([f"### {heading}"] if heading else []) + paras)


def written(notebook: str, out_dir: str | Path = "outputs", figures_dir: str | Path = "figures") -> str:
    """Markdown list of what `notebook` wrote: its result tables under <out_dir>/results/<notebook>/ and
    its figures (PNG, with PDF and CSV beside) and interactive pages under <figures_dir>/<notebook>/."""
    tables = resolve(out_dir) / "results" / notebook
    figs = resolve(figures_dir) / notebook
    lines = ["### Where this run wrote its results", ""]
    csvs = sorted(tables.glob("*.csv")) if tables.is_dir() else []
    lines.append(f"- tables ({len(csvs)}): `{tables}/`" + (": " + ", ".join(f"`{p.name}`" for p in csvs)
                                                          if csvs else " (none)"))
    pngs = sorted(figs.glob("*.png")) if figs.is_dir() else []
    lines.append(f"- figures ({len(pngs)}, each with its PDF and a CSV of its numbers): `{figs}/`"
                 + (": " + ", ".join(f"`{p.stem}`" for p in pngs) if pngs else " (none)"))
    pages = sorted(figs.glob("*.html")) if figs.is_dir() else []
    if pages:
        lines.append(f"- interactive pages ({len(pages)}, open offline in a browser): "
                     + ", ".join(f"`{p.name}`" for p in pages))
    lines.append(f"- captions: `{resolve(figures_dir) / 'README.md'}`")
    return "\n".join(lines)


def show(markdown: str):
    """The Markdown as a rich display object (rendered by JupyterLab, kept as text/markdown by papermill)."""
    from IPython.display import Markdown   # lazy: the package works without IPython outside notebooks
    return Markdown(markdown)
