"""What every check is: a name, a phase, a causal position, its manual, and `run(ctx)`."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from quad_doctor.context import DiagnosisContext
    from quad_doctor.findings import Finding


class SkipCheck(Exception):
    """Raised by `run` when the check does not apply (e.g. nothing is trainable); the reason is
    reported as the check's `skipped` status."""


class Check:
    """Base class of the diagnostic checks; the subclass docstring is the check's manual."""

    name: ClassVar[str]
    phase: ClassVar[str]  # "data": labels/arrays only; "model": built model; "probe": real steps
    order: ClassVar[int]  # causal position: upstream faults explain downstream symptoms

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        """Gather evidence from the context and yield findings; never mutate what it hands out."""
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        """The check's manual: What it checks / Why it matters / Example / Fix."""
        return inspect.cleandoc(cls.__doc__ or "")
