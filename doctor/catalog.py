"""The checks' and live rules' manuals, read without importing them: name, phase, order, docstring.

`quad-doctor checks` and `explain` print only these, and the check and rule modules import torch
(over a second before the first line appears). So the registries (`ALL_CHECKS` in
checks/__init__.py, `LIVE_RULES` in rules/__init__.py) and the classes they list are read from
their source with `ast`, never executed. tests/doctor/test_startup.py keeps the catalog identical
to the imported registries.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from quad_doctor.trainer.errors import UsageError

# The class attributes a manual is made of; a live rule has no phase.
ATTRIBUTES = ("name", "phase", "order")


@dataclass(frozen=True)
class Manual:
    """One check's or live rule's name, causal position and manual (its class docstring)."""

    name: str
    order: int
    doc: str  # cleaned as `Check.doc()` and `Rule.doc()` clean it
    phase: str = ""  # a check's phase; "" for a live rule

    @property
    def summary(self) -> str:
        """The manual's first line: what the check checks, what the rule watches."""
        return self.doc.partition("\n")[0]


def checks() -> tuple[Manual, ...]:
    """Every check's manual, in causal order (`ALL_CHECKS`)."""
    return _registry("quad_doctor.checks", "ALL_CHECKS")


def live_rules() -> tuple[Manual, ...]:
    """Every live rule's manual, in causal order (`LIVE_RULES`)."""
    return _registry("quad_doctor.rules", "LIVE_RULES")


def live_only_rules() -> tuple[Manual, ...]:
    """The live rules with no pre-flight check of the same name (`LIVE_ONLY`)."""
    names = {check.name for check in checks()}
    return tuple(rule for rule in live_rules() if rule.name not in names)


def find_check(name: str) -> Manual:
    """The check called `name`; an unknown name is a usage error with the closest one suggested."""
    for check in checks():
        if check.name == name:
            return check
    close = difflib.get_close_matches(name, [check.name for check in checks()], n=1)
    raise UsageError(f"unknown check '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""))


def find_live_rule(name: str) -> Manual | None:
    """The live rule called `name`, if there is one."""
    return next((rule for rule in live_rules() if rule.name == name), None)


@functools.cache
def _registry(package: str, variable: str) -> tuple[Manual, ...]:
    """The manuals of the classes `package/__init__.py` lists in the tuple `variable`."""
    tree = _parse(_package_dir(package) / "__init__.py")
    modules = {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    listed = next((value for target, value in _assignments(tree.body) if target == variable), None)
    classes = [e.id for e in getattr(listed, "elts", ()) if isinstance(e, ast.Name)]
    if not isinstance(listed, ast.Tuple) or len(classes) != len(listed.elts):
        raise TypeError(f"{package}.{variable}: expected a tuple of imported class names")
    return tuple(_manual(modules[name], name) for name in classes)


def _manual(module: str, class_name: str) -> Manual:
    """The manual of class `class_name` in `module`, from the module's source."""
    package, _, leaf = module.rpartition(".")
    path = _package_dir(package) / f"{leaf}.py"
    node = next(
        (n for n in _parse(path).body if isinstance(n, ast.ClassDef) and n.name == class_name),
        None,
    )
    if node is None:  # the registry must import each class from the file that defines it
        raise TypeError(f"{path}: defines no class {class_name}")
    values = {
        target: ast.literal_eval(value)
        for target, value in _assignments(node.body)
        if target in ATTRIBUTES
    }
    if "name" not in values or "order" not in values:
        raise TypeError(f"{path}: {class_name} sets no `name` or `order` of its own")
    return Manual(
        values["name"], values["order"], ast.get_docstring(node) or "", values.get("phase", "")
    )


def _assignments(body: list[ast.stmt]) -> list[tuple[str, ast.expr]]:
    """`(name, value)` of each `name = value` and `name: type = value` in `body`."""
    pairs = []
    for statement in body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets = [statement.target]
        else:
            continue
        pairs += [(t.id, statement.value) for t in targets if isinstance(t, ast.Name)]
    return pairs


def _package_dir(package: str) -> Path:
    """Where `package`'s modules lie, found without importing it (its `__init__` imports the
    checks) — only the packages above it are imported, and `quad_doctor` imports nothing heavy."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package}: not a package")
    return Path(spec.submodule_search_locations[0])


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))
