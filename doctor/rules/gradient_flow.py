"""gradient-flow, live: the real run's gradient norms, every k steps."""

from __future__ import annotations

import math

from quad_doctor.checks.gradient_flow import (
    EXPLODING_GRAD_NORM,
    VANISHING_GRAD_RMS,
    VANISHING_RELATIVE,
)
from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import GradientSummary, Rule, RunFacts, StepRecord

# Gradient norms must misbehave at this many measurements in a row (a single step can spike).
GRADIENT_STREAK = 3


class GradientRule(Rule):
    """Gradient norms every k steps: exploding, vanishing, a modality that gets almost none.

    What it checks:
        On measured steps (the first 3, then every 16th, less often when the doctor runs over
        its time budget), before the update: a global gradient norm above 100 (exploding), a
        module whose gradient RMS per weight is below 1e-9 (vanishing), an encoder whose
        gradient norm is below 1e-4 of the largest encoder's (a modality cut off). Each must
        hold at 3 measurements in a row, and each is reported once. With several ranks it also
        reads each rank's own gradient norm before DDP averages them: a rank that explodes, or
        one below 1e-4 of the largest rank's. NaN/Inf gradients are the non-finite rule's.

    How it differs from the pre-flight check:
        `quad-doctor diagnose` takes a few steps on a copy of the model at the schedule's peak
        LR and overfits one batch; this rule reads the real run's gradients, at the LR each step
        has, the whole run long and without extra steps, against the check's thresholds. See
        `quad-doctor explain gradient-flow` for the check.

    Why it matters:
        The pre-flight probe sees the first steps only; the run's gradients can go wrong later,
        as the LR rises through warm-up and the weights move. Exploding gradients come before
        divergence and NaN, vanishing ones before a plateau or a pinned loss.

    Example:
        `--set model.fusion.l2_normalize=false`: "gradients explode: global norm 2.11e+03 at
        step 2"; `--set model.fusion.dim=2`: "gradients vanish: encoders.text.backbone gets
        7.9e-16 per weight"; a forward hook scaling the audio encoding by 1e-9: "the audio
        encoder gets almost no gradient: 1.7e-10 of the largest encoder's".

    Fix:
        Lower `train.learning_rate` and keep `model.fusion.l2_normalize` on when gradients
        explode; keep the fusion wide (`model.fusion.dim`) when they vanish; reconnect an
        encoder cut off from the fusion (a detach, a zero scale, a frozen layer) or give its
        stream signal.
    """

    name = "gradient-flow"
    order = 80

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.streaks: dict[str, int] = {}
        self.fired_signals: set[str] = set()

    def before_update(self, record: StepRecord) -> list[Finding]:
        grads = record.gradients
        if grads is None or grads.non_finite:
            return []  # non-finite gradients are the non-finite rule's
        encoders = self._modality_norms(grads)
        largest = max(encoders.values(), default=0.0)
        signals = {
            "exploding": grads.total_norm > EXPLODING_GRAD_NORM,
            "vanishing": min(grads.module_rms.values(), default=1.0) < VANISHING_GRAD_RMS,
            "modality": largest > 0 and min(encoders.values()) < VANISHING_RELATIVE * largest,
        }
        findings = []
        for signal, on in signals.items():
            self.streaks[signal] = self.streaks.get(signal, 0) + 1 if on else 0
            if self.streaks[signal] >= GRADIENT_STREAK and signal not in self.fired_signals:
                self.fired_signals.add(signal)
                findings.append(self._finding(signal, record, grads, encoders))
        return findings

    def after_update(self, record: StepRecord) -> list[Finding]:
        """Distributed: each rank's own gradient norm, measured before DDP averaged them."""
        norms = record.rank_grad_norms
        if not norms or not all(math.isfinite(n) for n in norms):
            return []  # measured every 16th step only
        largest = max(norms)
        signals = {
            "rank-exploding": [r for r, n in enumerate(norms) if n > EXPLODING_GRAD_NORM],
            "rank-starved": [r for r, n in enumerate(norms) if n < VANISHING_RELATIVE * largest],
        }
        findings = []
        for signal, ranks in signals.items():
            self.streaks[signal] = self.streaks.get(signal, 0) + 1 if ranks else 0
            if self.streaks[signal] >= GRADIENT_STREAK and signal not in self.fired_signals:
                self.fired_signals.add(signal)
                findings.append(self._rank_finding(signal, ranks, record, norms))
        return findings

    def _rank_finding(
        self, signal: str, ranks: list[int], record: StepRecord, norms: list[float]
    ) -> Finding:
        where = ", ".join(map(str, ranks))
        evidence = {
            "signal": signal,
            "step": record.step,
            "ranks": ranks,
            "grad_norm_per_rank": [significant(n) for n in norms],
            "steps_in_a_row": GRADIENT_STREAK,
        }
        if signal == "rank-exploding":
            return Finding(
                self.name,
                Severity.ERROR,
                f"rank {where}: its own gradient norm {max(norms):.3g} explodes at step "
                f"{record.step} (healthy 0.3-30), before DDP averages it with the others'",
                evidence,
                "Lower train.learning_rate; look at what that rank's batches hold.",
                explains=("divergence", "non-finite"),
            )
        return Finding(
            self.name,
            Severity.WARNING,
            f"rank {where}: its own gradient is {min(norms) / max(norms):.1e} of the largest "
            f"rank's at step {record.step}: its batches teach the model almost nothing",
            evidence,
            "Check that rank's batches (see sampler-class-mix's per-rank evidence); with "
            "dist.gather_features = false a rank whose batches hold one class contributes no "
            "gradient.",
        )

    def _modality_norms(self, grads: GradientSummary) -> dict[str, float]:
        norms: dict[str, float] = {}
        for module, norm in grads.module_norm.items():
            parts = module.split(".")
            if parts[0] == "encoders":
                norms[parts[1]] = math.hypot(norms.get(parts[1], 0.0), norm)
        return norms

    def _finding(
        self,
        signal: str,
        record: StepRecord,
        grads: GradientSummary,
        encoders: dict[str, float],
    ) -> Finding:
        evidence = {
            "signal": signal,
            "step": record.step,
            "lr": record.lr,
            "measurements_in_a_row": GRADIENT_STREAK,
            "global_grad_norm": significant(grads.total_norm),
            "grad_norm_per_module": {m: significant(v) for m, v in grads.module_norm.items()},
            "grad_norm_per_modality": {m: significant(v) for m, v in encoders.items()},
        }
        if signal == "exploding":
            title = (
                f"gradients explode: global norm {grads.total_norm:.3g} at step {record.step} "
                f"(healthy 0.3-30)"
            )
            remedy = "Lower train.learning_rate and keep model.fusion.l2_normalize on."
            explains: tuple[str, ...] = ("divergence", "non-finite")
        elif signal == "vanishing":
            module = min(grads.module_rms, key=grads.module_rms.__getitem__)
            title = (
                f"gradients vanish: {module} gets {grads.module_rms[module]:.2g} per weight "
                f"(Adam's eps is 1e-8)"
            )
            remedy = "Keep the fusion wide (model.fusion.dim) and its LayerNorm and L2 norm on."
            explains = ("plateau", "loss-pinned")
        else:
            modality = min(encoders, key=encoders.__getitem__)
            title = (
                f"the {modality} encoder gets almost no gradient: "
                f"{encoders[modality] / max(encoders.values()):.1e} of the largest encoder's"
            )
            remedy = (
                f"Check that the {modality} encoder's output reaches the fusion (a detach, a zero "
                "scale or a frozen layer) and that its stream carries signal."
            )
            explains = ()
        return Finding(self.name, Severity.ERROR, title, evidence, remedy, explains=explains)
