"""Generate `docs/checks/` from the docstrings: a page per check and per live-only rule, an index.

The manuals come from the catalog (read from the source, as `quad-doctor explain` prints them).

The page of a check that shares its name with a live rule ends with that rule's manual.
Run `python -m quad_doctor.docs [DIR]` (or `make docs`); a test keeps the committed pages current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from quad_doctor.catalog import Manual, checks, find_live_rule, live_only_rules, live_rules

HEADINGS = ("What it checks:", "Why it matters:", "Example:", "Fix:")
DEFAULT_DIR = Path("docs/checks")


def _sections(body: str, level: str) -> list[str]:
    """A manual's headed blocks as Markdown sections at heading `level` (`##`, `###`)."""
    lines: list[str] = []
    for block in re.split(r"\n(?=\S)", body.strip()):
        heading, _, text = block.partition("\n")
        lines += ["", f"{level} {heading.rstrip(':')}", ""]
        lines += [line.removeprefix("    ") for line in text.splitlines()]
    return lines


def _page(name: str, doc: str, position: str) -> list[str]:
    """A page's lines: the title, the manual's summary, where it runs, then its sections."""
    summary, _, body = doc.partition("\n")
    lines = [f"# `{name}`", "", summary.strip(), "", position]
    lines.append(f"Print this page with `quad-doctor explain {name}`.")
    return lines + _sections(body, "##")


def check_page(check: Manual) -> str:
    """One check's manual as Markdown, followed by its live rule's when one shares its name."""
    position = f"Phase `{check.phase}`, position {check.order} in the causal order."
    lines = _page(check.name, check.doc, position)
    rule = find_live_rule(check.name)
    if rule is not None:
        summary, _, body = rule.doc.partition("\n")
        lines += ["", "## Live rule", "", summary.strip(), ""]
        lines.append("What `quad-doctor train` watches under this name while it trains.")
        lines += _sections(body, "###")
    return "\n".join(lines).rstrip() + "\n"


def rule_page(rule: Manual) -> str:
    """One live-only rule's manual as Markdown."""
    position = f"Live rule of `quad-doctor train`, position {rule.order} in the causal order."
    return "\n".join(_page(rule.name, rule.doc, position)).rstrip() + "\n"


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table's lines."""
    lines = [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
    return lines + [f"| {' | '.join(row)} |" for row in rows]


def index_page() -> str:
    """The checks, then the live rules, in causal order, linking to each page."""
    check_rows = [
        (str(c.order), f"[`{c.name}`]({c.name}.md)", c.phase, c.summary.strip()) for c in checks()
    ]
    rule_rows = [
        (
            str(rule.order),
            f"[`{rule.name}`]({rule.name}.md{'' if rule in live_only_rules() else '#live-rule'})",
            rule.summary.strip(),
        )
        for rule in live_rules()
    ]
    lines = [
        "# Checks",
        "",
        "`quad-doctor diagnose` runs these in causal order: an upstream fault explains the",
        "downstream symptoms, so it ranks first and the symptoms are shown under it.",
        "Generated from the checks' and live rules' docstrings by `make docs`.",
        "",
        *_table(("order", "check", "phase", "what it checks"), check_rows),
        "",
        "## Live rules",
        "",
        "`quad-doctor train` judges every step with these rules, ranked with the checks' order.",
        "A rule named after a check builds that check's finding from the batches training draws;",
        "its manual ends the check's page.",
        "",
        *_table(("order", "rule", "what it watches"), rule_rows),
    ]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name → content of every generated page."""
    generated = {f"{check.name}.md": check_page(check) for check in checks()}
    generated |= {f"{rule.name}.md": rule_page(rule) for rule in live_only_rules()}
    generated["README.md"] = index_page()
    return generated


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every page into `directory`, removing pages of checks or rules that no longer
    exist."""
    directory.mkdir(parents=True, exist_ok=True)
    generated = pages()
    for stale in directory.glob("*.md"):
        if stale.name not in generated:
            stale.unlink()
    written = []
    for name, text in generated.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    for path in write(target):
        print(path)
