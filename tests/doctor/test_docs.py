from __future__ import annotations

from pathlib import Path

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.docs import HEADINGS, pages
from quad_doctor.rules import LIVE_ONLY, LIVE_RULES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "checks"


def test_every_check_documents_the_four_headings():
    for check in ALL_CHECKS:
        doc = check.doc()
        positions = [doc.find(heading) for heading in HEADINGS]
        assert -1 not in positions and positions == sorted(positions), check.name


def test_each_live_rule_has_its_page_or_a_section_on_its_checks_page():
    generated = pages()
    index = generated["README.md"]
    for rule in LIVE_RULES:
        page = generated[f"{rule.name}.md"]
        if rule in LIVE_ONLY:
            assert page.startswith(f"# `{rule.name}`\n") and "## Fix" in page
            assert f"[`{rule.name}`]({rule.name}.md)" in index
        else:
            check, live = page.split("\n## Live rule\n")
            assert "## Fix" in check and "### How it differs from the pre-flight check" in live
            assert f"[`{rule.name}`]({rule.name}.md#live-rule)" in index


def test_committed_check_pages_match_the_docstrings():
    expected = pages()
    assert sorted(path.name for path in DOCS.glob("*.md")) == sorted(expected), "run `make docs`"
    for name, text in expected.items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, f"{name} is stale: `make docs`"
