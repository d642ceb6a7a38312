"""tg_utils.findings: Markdown findings built from numbers, and the list of what a notebook wrote."""
import pytest

from tg_utils.findings import Finding, show, to_markdown, written


def test_finding_paragraph_puts_the_paper_beside_ours():
    f = Finding("Shuffling raises the ID peak", "higher for 3/3 prompts (7.3 -> 10.6).",
                paper="higher and earlier peaks for every prompt.", verdict="partly")
    md = f.markdown()
    assert md.startswith("**Shuffling raises the ID peak.** *The paper:* higher and earlier")
    assert "*Here:* higher for 3/3 prompts (7.3 -> 10.6)." in md
    assert md.endswith("— **partly**.")
    assert "\n" not in md


def test_to_markdown_reflows_and_separates_paragraphs():
    md = to_markdown([Finding("A", "one\n  two"), "a caveat\nwrapped"], heading="Findings")
    assert md.split("\n\n") == ["### Findings", "**A.** one two", "a caveat wrapped"]


def test_numbers_come_from_the_values_given():
    def findings(peak):
        return to_markdown([Finding("Peak", f"{peak:.1f} at layer 3")])
    assert findings(7.25) != findings(8.0)
    assert "8.0 at layer 3" in findings(8.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(title=" ", ours="x"), "needs a title"),
    (dict(title="t", ours=""), "needs a title"),
    (dict(title="t", ours="x", verdict="maybe"), "verdict 'maybe'"),
])
def test_bad_findings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Finding(**kwargs)


def test_no_findings_is_an_error():
    with pytest.raises(ValueError, match="no findings"):
        to_markdown([])


def test_written_lists_tables_figures_and_pages(tmp_path):
    nb = "03_geometry_metrics"
    (tmp_path / "out" / "results" / nb).mkdir(parents=True)
    (tmp_path / "out" / "results" / nb / "geometry_long.csv").write_text("a\n1\n")
    figs = tmp_path / "figs" / nb
    figs.mkdir(parents=True)
    for f in ("id_and_overlap.png", "id_and_overlap.pdf", "id_and_overlap.csv", "id_and_overlap.html"):
        (figs / f).write_text("x")
    md = written(nb, tmp_path / "out", tmp_path / "figs")
    assert "tables (1)" in md and "`geometry_long.csv`" in md
    assert "figures (1," in md and "`id_and_overlap`" in md
    assert "interactive pages (1" in md and "`id_and_overlap.html`" in md
    empty = written("07_attention_geometry", tmp_path / "out", tmp_path / "figs")
    assert "tables (0)" in empty and "(none)" in empty


def test_show_is_rendered_as_markdown():
    obj = show("**x**")
    assert obj._repr_markdown_() == "**x**"
