"""embedding-collapse: the spread of the normalised features across the batch going to zero."""

from __future__ import annotations

from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import Rule, RunFacts, StepRecord

# Embedding collapse: spread = 1 - |mean of the normalised features|^2 over the batch (0 when
# every sample maps to one point). Untrained 0.067, healthy never below 0.043 over 30 epochs;
# sequential sampler 0.012 by step 80 and falling; lr 30 with no warm-up 0.0009 from step 1.
COLLAPSED_SPREAD = 0.005
COLLAPSED_STEPS = 5


class EmbeddingCollapseRule(Rule):
    """The spread of the normalised features across the batch going to zero.

    What it checks:
        1 - |mean of the normalised features|^2 over each batch (0 when every sample maps to the
        same point), below 0.005 for 5 steps in a row.

    Why it matters:
        Collapsed embeddings give every anchor the loss ln(B-1) and separate nothing.

    Example:
        lr 30 without warm-up: spread 0.0009 from step 1; untrained 0.067, healthy >= 0.043.

    Fix:
        Fix the cause above it (single-class batches, an LR that replaced the weights).
    """

    name = "embedding-collapse"
    order = 92

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.low = 0

    def after_update(self, record: StepRecord) -> list[Finding]:
        self.low = self.low + 1 if record.spread < COLLAPSED_SPREAD else 0
        if self.fired or self.low < COLLAPSED_STEPS:
            return []
        self.fired = True
        return [
            Finding(
                self.name,
                Severity.ERROR,
                f"the embeddings collapsed: spread {record.spread:.2g} across the batch at step "
                f"{record.step} (untrained about 0.07; 0 = every sample on one point)",
                {
                    "step": record.step,
                    "lr": record.lr,
                    "spread": significant(record.spread),
                    "steps_below_threshold": self.low,
                    "threshold": COLLAPSED_SPREAD,
                },
                "Collapse follows single-class batches or an LR that replaces the weights "
                "(see the findings above it); with neither, raise train.temperature.",
                explains=("loss-pinned", "plateau"),
            )
        ]
