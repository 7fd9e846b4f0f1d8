"""Generate `docs/checks/`: one Markdown page per check from its docstring, plus an index.

Run `python -m quad_doctor.docs [DIR]` (or `make docs`); a test keeps the committed pages current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from quad_doctor.checks import ALL_CHECKS, Check

HEADINGS = ("What it checks:", "Why it matters:", "Example:", "Fix:")
DEFAULT_DIR = Path("docs/checks")


def check_page(check: type[Check]) -> str:
    """One check's manual as Markdown: its summary, then a section per docstring heading."""
    summary, _, body = check.doc().partition("\n")
    lines = [f"# `{check.name}`", "", summary.strip(), ""]
    lines.append(f"Phase `{check.phase}`, position {check.order} in the causal order.")
    lines.append(f"Print this page with `quad-doctor explain {check.name}`.")
    for block in re.split(r"\n(?=\S)", body.strip()):
        heading, _, text = block.partition("\n")
        lines += ["", f"## {heading.rstrip(':')}", ""]
        lines += [line.removeprefix("    ") for line in text.splitlines()]
    return "\n".join(lines).rstrip() + "\n"


def index_page() -> str:
    """The list of checks in causal order, linking to each page."""
    lines = [
        "# Checks",
        "",
        "`quad-doctor diagnose` runs these in causal order: an upstream fault explains the",
        "downstream symptoms, so it ranks first and the symptoms are shown under it.",
        "Generated from the checks' docstrings by `make docs`.",
        "",
        "| order | check | phase | what it checks |",
        "|---|---|---|---|",
    ]
    for check in ALL_CHECKS:
        summary = check.doc().partition("\n")[0].strip()
        lines.append(
            f"| {check.order} | [`{check.name}`]({check.name}.md) | {check.phase} | {summary} |"
        )
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name → content of every generated page."""
    generated = {f"{check.name}.md": check_page(check) for check in ALL_CHECKS}
    generated["README.md"] = index_page()
    return generated


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every page into `directory`, removing pages of checks that no longer exist."""
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
