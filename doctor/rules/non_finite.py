"""non-finite: NaN/Inf in the loss or the gradients, caught before the update."""

from __future__ import annotations

import math

from quad_doctor.findings import Finding, Severity
from quad_doctor.rules.base import Rule, StepRecord

# Sample ids and per-module numbers shown in the evidence.
SHOWN_IDS = 16


class NonFiniteRule(Rule):
    """NaN/Inf in the loss or the gradients, caught before the optimizer applies the step.

    What it checks:
        Every step's loss, and every measured step's gradient norms, for NaN or Inf; when one
        shows up, which samples of the batch hold NaN/Inf inputs.

    Why it matters:
        One update on a NaN loss makes the weights NaN for good; every later step is wasted.

    Example:
        `--set data.synthetic.nan_fraction=0.01 --stop-on critical`: stopped at step 0 before
        the update, with the sensor sample named.

    Fix:
        Repair the samples named (data-integrity), or lower the LR if the inputs were finite.
    """

    name = "non-finite"
    order = 91

    def before_update(self, record: StepRecord) -> list[Finding]:
        bad_modules = record.gradients.non_finite if record.gradients else []
        ranks = record.non_finite_ranks
        if self.fired or (math.isfinite(record.loss) and not bad_modules and not ranks):
            return []
        self.fired = True
        evidence = {
            "step": record.step,
            "epoch": record.epoch,
            "lr": record.lr,
            "loss": record.loss if math.isfinite(record.loss) else str(record.loss),
            "modules_with_non_finite_gradients": bad_modules,
            "batch_sample_ids": record.sample_ids[:SHOWN_IDS],
            "non_finite_inputs": record.non_finite_inputs,
        }
        what = "loss" if not math.isfinite(record.loss) or ranks else "gradient"
        where = ""
        if ranks:
            evidence["ranks_with_non_finite_loss"] = ranks
            where = f" on rank {', '.join(map(str, ranks))}"
        findings = [
            Finding(
                self.name,
                Severity.CRITICAL,
                f"the {what} is {'NaN/Inf' if what == 'gradient' or ranks else record.loss}"
                f"{where} at step {record.step} (lr {record.lr:.3g}): one update on it makes the "
                "weights NaN",
                evidence,
                "If the batch's inputs are finite (see the evidence), the step blew up: lower "
                "train.learning_rate (`quad-doctor lr-range-test` measures a safe one) and keep "
                "model.fusion.l2_normalize on; otherwise repair the samples named.",
            )
        ]
        if record.non_finite_inputs:
            where = ", ".join(f"{m} {len(ids)}" for m, ids in record.non_finite_inputs.items())
            findings.append(
                Finding(
                    "data-integrity",
                    Severity.CRITICAL,
                    f"the batch of step {record.step} holds samples with NaN or Inf ({where}): "
                    "each poisons its batches, then the weights",
                    {
                        "step": record.step,
                        **{
                            f"{modality}_sample_ids": ids[:SHOWN_IDS]
                            for modality, ids in record.non_finite_inputs.items()
                        },
                    },
                    "Drop or repair these samples and re-export the arrays; `quad-doctor "
                    "diagnose` lists every one of them before training.",
                    explains=("non-finite", "divergence"),
                )
            )
        return findings
