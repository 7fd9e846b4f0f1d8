from __future__ import annotations

from pathlib import Path

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.docs import HEADINGS, pages

DOCS = Path(__file__).resolve().parents[2] / "docs" / "checks"


def test_every_check_documents_the_four_headings():
    for check in ALL_CHECKS:
        doc = check.doc()
        positions = [doc.find(heading) for heading in HEADINGS]
        assert -1 not in positions and positions == sorted(positions), check.name


def test_committed_check_pages_match_the_docstrings():
    expected = pages()
    assert sorted(path.name for path in DOCS.glob("*.md")) == sorted(expected), "run `make docs`"
    for name, text in expected.items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, f"{name} is stale: `make docs`"
