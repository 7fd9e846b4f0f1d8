"""gradient-flow: real training steps on a copy of the model, and what its gradients show."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext, StepBatch, isolated_rng, streams_of
from quad_doctor.findings import Finding, Severity, significant

# Measured numbers below: the embedded default (1500 samples), seeds 0-2 x batch 16/32/64, unless
# said otherwise.

# Steps on the trainer's own first batches with the configured optimizer: enough to see a norm
# settle or blow up; each costs ~25 ms at batch 32 on 2 CPU cores.
PROBE_STEPS = 3
# Overfit-one-batch runs at a fixed, known-good learning rate so it tests the model and loss
# path, not the configured LR (lr-schedule and lr-range-test own that). With Adam 1e-3 a healthy
# model closes half the gap to the ideal loss in 3-7 steps (3-11 with one stream dead) and 95% of
# it in about 10 (batch 32: 3.504 -> 1.518 by step 8, ideal 1.470).
OVERFIT_LR = 1e-3
# The loop stops as soon as the loss has fallen far enough, so a healthy model pays 3-11 steps
# and a broken one all of them (~0.75 s at batch 32).
OVERFIT_MAX_STEPS = 30
# Share of the gap between the start loss and the ideal loss (every class on its own simplex
# vertex, at the configured temperature) the loss must close. Healthy: reached by step 11 at the
# latest; `model.fusion.dim=2` (LayerNorm over two features leaves two possible embeddings):
# 0.000 after 30 steps (3.4340 throughout). Relative to the temperature-aware ideal, so a large
# `train.temperature` (loss-bounds' business) still passes: tau=1 closes 94%, tau=50 97%.
OVERFIT_MIN_PROGRESS = 0.5
# When the model does not fix its output norm (logits), the target is measured at the untrained
# norm, which the outputs must first outgrow: a healthy 4-class cross-entropy MLP closed 0.27 of
# that gap in 30 steps (1.58 -> 1.31, target 0.59); a model that cannot fit closes ~0.
OVERFIT_MIN_PROGRESS_FREE_NORM = 0.1
# A modality's share of the loss's first-order dependence on what that modality tells samples
# apart, sum_i |<dL/de_i, e_i - mean(e)>|, summed over the overfit steps (fair share 0.25).
# Healthy minimum: video 0.030, audio 0.149, sensor 0.295, text 0.199 (video 0.025 when the text
# stream is dead). A dead stream (`data.synthetic.dead_modality=...`, the same input for every
# sample) gives 1e-8 to 8e-8 for each of video, audio, sensor and text. The plain gradient norm
# w.r.t. each encoding cannot tell them apart: a constant encoding still gets a per-sample
# gradient (dead video 0.20-0.22 of the total, healthy 0.21-0.23), and its encoder's parameters
# still get one (dead video 0.03-0.18 of the encoders' total).
DEAD_MODALITY_SHARE = 0.005
# Exploding: one step at the peak LR moves a module by more than its own norm, i.e. replaces it.
# Healthy AdamW at the default peak 1e-4: 6e-5 (text backbone) to 2.5e-3 (fusion); the ratio
# grows with the LR: lr=0.05 gives 1.24 on the fusion, after which the loss sits at
# ln(B-1) = 3.4340 with a gradient norm of 1e-4 (collapsed).
EXPLODING_UPDATE_RATIO = 1.0
# Exploding: the global gradient norm of one step. Healthy: 0.27-6.2 (sequential sampler
# 0.12-1.6); `model.fusion.l2_normalize=false`: 1.2e3-2.1e3 with the loss at 110-200.
EXPLODING_GRAD_NORM = 100.0
# Vanishing: a module's per-element gradient RMS a tenth of Adam's eps (1e-8) or less, where
# Adam's step shrinks tenfold or more. Healthy: >= 2.5e-5; `model.fusion.dim=2`: 7e-16 to 1e-14
# in every encoder module.
VANISHING_GRAD_RMS = 1e-9
# Vanishing: a module's gradient norm next to the largest module's. Healthy: >= 0.014;
# `model.fusion.dim=2`: encoders ~1e-6 of the fusion's.
VANISHING_RELATIVE = 1e-4


def _stream_of(module: str, streams: list[str]) -> str | None:
    """The input stream a parameter group serves, when its name says (`audio` for
    `encoders.audio.backbone` or `audio_encoder`); None for shared parts such as the fusion."""
    parts = module.replace("_", ".").split(".")
    named = [s for s in streams if s in parts]
    return named[0] if len(named) == 1 else None


@dataclass
class NonFinite:
    """Where the first NaN/Inf showed up."""

    at: str  # "trainer batch 0", "overfit step 3"
    loss: float
    modules: list[str]
    inputs: list[str]  # streams whose input tensor holds NaN/Inf


@dataclass
class ProbeEvidence:
    """The trainer's first batches, stepped with the configured optimizer at the peak LR."""

    lr: float
    lr_at_step_0: float
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    global_grad_norms: list[float] = field(default_factory=list)
    grad_norm: dict[str, float] = field(default_factory=dict)  # max over steps
    grad_rms: dict[str, float] = field(default_factory=dict)  # max over steps
    update_ratio: dict[str, float] = field(default_factory=dict)  # max over steps
    anchorless_steps: int = 0  # steps whose batch gave SupCon no positive pair
    disconnected: bool = False  # the loss does not depend on any trainable parameter
    no_gradient: dict[str, list[str]] | None = None  # module -> parameters, at the first step
    non_finite: NonFinite | None = None


@dataclass
class OverfitEvidence:
    """One fixed mixed batch, trained on with Adam at `OVERFIT_LR`."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    ideal_loss: float = math.nan
    modality_attribution: dict[str, float] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    min_progress: float = OVERFIT_MIN_PROGRESS
    attribution: str = "encodings"  # or "ablation": the loss change when a stream is shuffled
    non_finite: NonFinite | None = None

    @property
    def progress(self) -> float:
        """Share of the gap between the start and the ideal loss closed so far."""
        if not self.losses or not math.isfinite(self.losses[0] - self.ideal_loss):
            return math.nan
        gap = self.losses[0] - self.ideal_loss
        return (self.losses[0] - min(self.losses)) / gap if gap > 0 else 1.0

    @property
    def modality_share(self) -> dict[str, float]:
        """Each modality's share of the summed attribution; empty when there is none."""
        total = sum(self.modality_attribution.values())
        if not total > 0:
            return {}
        return {m: value / total for m, value in self.modality_attribution.items()}


class GradientFlow(Check):
    """Real training steps on a copy of the model: do gradients reach every part, sanely?

    What it checks:
        On a copy of the model (the original, its optimizer and the RNG stay untouched) it takes
        a few steps on the trainer's own first batches with the configured optimizer at the
        schedule's peak learning rate, and records each module's gradient norm
        (`encoders.<modality>.backbone`, `encoders.<modality>.head`, `fusion`), NaN/Inf in the
        loss or gradients, trainable parameters that get no gradient, vanishing and exploding
        norms, and update-to-weight ratios ||dw||/||w||. Then it trains another copy on one fixed
        batch holding every class (Adam, lr 1e-3) and checks that the loss falls towards the
        lowest value SupCon can reach on it, and how much each modality's encoding moves the loss.
        Parameters with `requires_grad=False` are the frozen-parameters check's business.

    Why it matters:
        If gradients are NaN, missing, vanishing or exploding, or the model cannot even fit one
        batch at a known-good learning rate, no learning rate, schedule or epoch count will
        help: something in the model or loss path is broken. A modality whose encoding does not
        move the loss contributes nothing, usually because its stream carries no signal.

    Example:
        `--set data.synthetic.nan_fraction=0.05` makes the loss NaN at the first step (critical);
        `--set model.fusion.dim=2` leaves LayerNorm two possible outputs, so gradients vanish
        (~1e-13) and the one-batch loss stays at 3.4340 (error);
        `--set data.synthetic.dead_modality=audio` gives audio a 0.000 share of the loss's
        dependence on the modalities (warning).

    Fix:
        Remove or repair non-finite samples; reconnect detached or frozen-by-mistake parts of the
        forward pass; keep `model.fusion.l2_normalize` on and the fusion wide enough; lower an
        LR whose single step replaces the weights; check the data of a modality with no share.
    """

    name = "gradient-flow"
    phase = "probe"
    order = 80

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        if ctx.optimizer is None:
            raise SkipCheck("no trainable parameters")
        with isolated_rng(ctx.seed, ctx.device):
            probe = self._probe(ctx)
            overfit = self._overfit(ctx)
        # for the report's pictures: the largest gradient norm of each module over the probe
        ctx.published["gradient_norms"] = {m: significant(v) for m, v in probe.grad_norm.items()}
        ctx.published["gradient_flow_steps"] = {"probe": probe.steps, "overfit": overfit.steps}
        yield from self._findings(ctx, probe, overfit)

    # -- measurement -----------------------------------------------------------------------------

    @staticmethod
    def _probe(ctx: DiagnosisContext) -> ProbeEvidence:
        schedule = ctx.schedule
        # The peak, not step 0: warm-up starts at `warmup_start_lr` (1e-7 by default), where every
        # ratio is ~1e-6 and says nothing about the largest step training will take.
        peak_step = min(schedule.warmup_steps, schedule.total_steps - 1)
        evidence = ProbeEvidence(
            lr=max(schedule.lr_at(0), schedule.lr_at(peak_step)), lr_at_step_0=schedule.lr_at(0)
        )
        model = ctx.model_copy().train()
        optimizer = ctx.optimizer_for(model)
        for group in optimizer.param_groups:
            group["lr"] = evidence.lr
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        for index, rows in enumerate(ctx.epoch_batches()[:PROBE_STEPS]):
            batch = ctx.batch(rows)
            loss = ctx.step_loss(model, batch)
            evidence.steps += 1
            evidence.losses.append(loss.item())
            if loss.item() == 0.0:
                evidence.anchorless_steps += 1  # e.g. SupCon without a positive pair
                continue
            if not loss.requires_grad:
                evidence.disconnected = True
                break
            evidence.non_finite = _backward(
                ctx, optimizer, params, loss, batch, f"trainer batch {index}"
            )
            if evidence.non_finite is not None:
                break
            if evidence.no_gradient is None:  # the first batch that gives the loss something to do
                evidence.no_gradient = _without_gradient(ctx, params)
            norms = _grad_norms(ctx, params)
            before = {name: p.detach().clone() for name, p in params.items()}
            optimizer.step()
            ratios = _update_ratios(ctx, params, before)
            evidence.global_grad_norms.append(math.sqrt(sum(n**2 for n, _ in norms.values())))
            for module, (norm, rms) in norms.items():
                evidence.grad_norm[module] = max(norm, evidence.grad_norm.get(module, 0.0))
                evidence.grad_rms[module] = max(rms, evidence.grad_rms.get(module, 0.0))
                if module in ratios:
                    evidence.update_ratio[module] = max(
                        ratios[module], evidence.update_ratio.get(module, 0.0)
                    )
        return evidence

    @staticmethod
    def _overfit(ctx: DiagnosisContext) -> OverfitEvidence:
        model = ctx.model_copy().train()
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.Adam(params.values(), lr=OVERFIT_LR)
        batch = ctx.batch(ctx.mixed_batch_indices)
        bounds = ctx.loss_bounds(batch.labels.cpu().numpy())
        evidence = OverfitEvidence(
            ideal_loss=bounds.floor_at_norm if bounds is not None else math.nan,
            streams=list(streams_of(batch.inputs)),
            min_progress=(
                OVERFIT_MIN_PROGRESS
                if ctx.output_probe.get("fixed_norm")
                else OVERFIT_MIN_PROGRESS_FREE_NORM
            ),
        )
        # The quadmodal model exposes its encodings: attribute the loss to them (calibrated).
        # Any other model: shuffle one stream across the batch and see how far the loss moves.
        encodes = hasattr(model, "encode") and hasattr(model, "fusion")
        encodes = encodes and isinstance(batch.inputs, dict)
        evidence.attribution = "encodings" if encodes else "ablation"
        attribution = dict.fromkeys(evidence.streams, 0.0)
        for step in range(OVERFIT_MAX_STEPS):
            if encodes:
                with ctx.autocast():
                    encodings = model.encode(**batch.inputs)
                    for name, encoding in encodings.items():
                        if encoding.requires_grad:
                            encoding.retain_grad()
                        else:  # a frozen encoder: a leaf still shows how the loss depends on it
                            encodings[name] = encoding.detach().requires_grad_()
                    loss = ctx.loss(model.fusion(encodings), batch.labels)
            else:
                loss = ctx.step_loss(model, batch)
            if loss.item() == 0.0:
                break  # nothing to fit (a batch without a positive pair): sampler-class-mix says so
            evidence.steps += 1
            evidence.losses.append(loss.item())
            if not loss.requires_grad:
                break  # nothing to fit with; the probe reports the disconnected loss
            evidence.non_finite = _backward(
                ctx, optimizer, params, loss, batch, f"overfit step {step}"
            )
            if evidence.non_finite is not None:
                break
            if encodes:
                for name, encoding in encodings.items():
                    centred = encoding.detach() - encoding.detach().mean(dim=0)
                    attribution[name] += float((encoding.grad * centred).sum(dim=1).abs().sum())
            optimizer.step()
            if evidence.progress >= evidence.min_progress:
                break
        if not encodes and evidence.steps and evidence.non_finite is None:
            attribution = _ablation(ctx, model, batch)
        evidence.modality_attribution = attribution
        return evidence

    # -- verdicts --------------------------------------------------------------------------------

    def _findings(
        self, ctx: DiagnosisContext, probe: ProbeEvidence, overfit: OverfitEvidence
    ) -> Iterator[Finding]:
        evidence = _evidence(probe, overfit)
        non_finite = probe.non_finite or overfit.non_finite
        if non_finite is not None:
            # Every other number is a consequence once a NaN has entered the weights' gradients.
            yield self._non_finite(non_finite, evidence)
            return
        if probe.disconnected:
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title="the loss does not depend on any trainable parameter: no gradient reaches "
                "the model",
                evidence=evidence,
                remedy="The forward pass is cut off from the loss (a .detach(), torch.no_grad(), "
                "or an .item()/.numpy() round trip between the model and the loss): remove it.",
                explains=("lr-range-test",),
            )
            return
        shares = overfit.modality_share
        streams = overfit.streams
        dead = [m for m in streams if m in shares and shares[m] < DEAD_MODALITY_SHARE]
        dead = dead if len(streams) > 1 else []
        no_gradient = probe.no_gradient or {}
        # A dead stream's first layer sees the same input for every sample and may get exactly
        # zero gradient; the dead-modality finding below covers it.
        missing = {
            module: names
            for module, names in no_gradient.items()
            if _stream_of(module, streams) not in dead
        }
        if missing:
            yield self._missing(missing, evidence)
        if overfit.steps and overfit.progress < overfit.min_progress:
            yield self._overfit_fails(overfit, evidence)
        yield from self._exploding(ctx, probe, evidence)
        yield from self._vanishing(probe, evidence)
        for modality in dead:
            yield self._dead(modality, shares, no_gradient, evidence, streams)

    def _non_finite(self, where: NonFinite, evidence: dict[str, object]) -> Finding:
        inputs = ", ".join(where.inputs)
        cause = f"; the {inputs} input holds NaN/Inf" if where.inputs else ""
        if where.inputs:
            remedy = (
                f"Remove or repair the samples whose {inputs} stream holds NaN/Inf "
                "(data-integrity lists them); one such sample poisons the whole batch's gradient."
            )
        else:
            remedy = (
                "The inputs are finite, so the forward or backward pass overflows: lower the "
                "learning rate, normalise the outputs the loss compares, and look for a log, "
                "division or exp of an unbounded value."
            )
        return Finding(
            check=self.name,
            severity=Severity.CRITICAL,
            title=f"NaN/Inf in the loss or gradients at {where.at}{cause}",
            evidence=evidence
            | {
                "non_finite_at": where.at,
                "loss": _finite_or_none(where.loss),
                "non_finite_gradient_modules": where.modules,
                "non_finite_inputs": where.inputs,
            },
            remedy=remedy,
            explains=("lr-range-test",),
        )

    def _missing(self, missing: dict[str, list[str]], evidence: dict[str, object]) -> Finding:
        count = sum(len(names) for names in missing.values())
        return Finding(
            check=self.name,
            severity=Severity.ERROR,
            title=f"{count} trainable parameter(s) get no gradient, in {', '.join(missing)}",
            evidence=evidence
            | {
                "without_gradient_modules": sorted(missing),
                "without_gradient": [n for names in missing.values() for n in names][:10],
            },
            remedy="These parameters are trained but the loss does not reach them: something "
            "between them and the loss is detached or unused. Reconnect it, or freeze them on "
            "purpose (requires_grad_(False); here model.<modality>.freeze_backbone / "
            "freeze_head, model.fusion.freeze).",
        )

    def _overfit_fails(self, overfit: OverfitEvidence, evidence: dict[str, object]) -> Finding:
        start, best = overfit.losses[0], min(overfit.losses)
        return Finding(
            check=self.name,
            severity=Severity.ERROR,
            title=f"the model cannot fit one batch: loss {start:.4f} -> {best:.4f} in "
            f"{overfit.steps} Adam steps at lr {OVERFIT_LR:g} (ideal {overfit.ideal_loss:.4f})",
            evidence=evidence,
            remedy="Training on one fixed batch with every class, at a learning rate that works "
            "for a healthy model, should drive the loss down; since it does not, the model or "
            "loss path is broken, not the data order or the LR. Look for a fusion that cannot "
            "separate samples (a tiny model.fusion.dim with LayerNorm), vanishing gradients, or "
            "parts that are frozen or detached.",
            explains=("lr-range-test",),
        )

    def _exploding(
        self, ctx: DiagnosisContext, probe: ProbeEvidence, evidence: dict[str, object]
    ) -> Iterator[Finding]:
        worst_module = max(probe.update_ratio, key=probe.update_ratio.__getitem__, default=None)
        if worst_module and probe.update_ratio[worst_module] > EXPLODING_UPDATE_RATIO:
            ratio = probe.update_ratio[worst_module]
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title=f"one step at the peak lr {probe.lr:.2e} moves {worst_module} by "
                f"{ratio:.0%} of its weights",
                evidence=evidence,
                remedy="A single update replaces the weights rather than adjusting them, so "
                "training diverges or collapses. Lower train.learning_rate until "
                "||dw||/||w|| is near 1e-3 per step; lr-range-test suggests a value.",
            )
        largest = max(probe.global_grad_norms, default=0.0)
        if largest > EXPLODING_GRAD_NORM:
            unnormalised = ctx.config is not None and not ctx.config.model.fusion.l2_normalize
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title=f"exploding gradients: global norm {largest:.3g} (healthy: 0.1-10)",
                evidence=evidence,
                remedy=(
                    "The fused features are not L2-normalised, so SupCon's logits z.z/tau and "
                    "their gradients are unbounded: turn model.fusion.l2_normalize back on."
                    if unnormalised
                    else "Find the layer whose output grows unbounded (the largest module norm "
                    "above); lower train.learning_rate or clip gradients."
                ),
                config_patch={"model.fusion.l2_normalize": True} if unnormalised else {},
            )

    def _vanishing(self, probe: ProbeEvidence, evidence: dict[str, object]) -> Iterator[Finding]:
        largest = max(probe.grad_norm.values(), default=0.0)
        vanishing = [
            module
            for module, norm in probe.grad_norm.items()
            if 0.0 < norm  # exact zeros are reported as parameters without gradient
            and (probe.grad_rms[module] < VANISHING_GRAD_RMS or norm < VANISHING_RELATIVE * largest)
        ]
        if vanishing:
            yield Finding(
                check=self.name,
                severity=Severity.WARNING,
                title=f"vanishing gradients in {', '.join(vanishing)}",
                evidence=evidence | {"vanishing_modules": vanishing},
                remedy="Almost no gradient reaches these modules, so they barely learn. Look for a "
                "saturating or degenerate layer between them and the loss (a LayerNorm over very "
                "few features, a huge train.temperature).",
            )

    def _dead(
        self,
        modality: str,
        shares: dict[str, float],
        no_gradient: dict[str, list[str]],
        evidence: dict[str, object],
        streams: list[str],
    ) -> Finding:
        fair = 1.0 / len(streams)
        zero = sorted(m for m in no_gradient if _stream_of(m, streams) == modality)
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            title=f"the {modality} encoding does not move the loss: {shares[modality]:.1%} of the "
            f"modalities' share (fair {fair:.0%})",
            evidence=evidence | {"low_share_modality": modality, "zero_gradient_modules": zero},
            remedy=f"The {modality} encoding is (nearly) the same for every sample, so nothing "
            f"the {modality} encoder learns can tell samples apart. Check the {modality} stream "
            "(data-integrity reports constant streams) and fix or drop it.",
        )


def _evidence(probe: ProbeEvidence, overfit: OverfitEvidence) -> dict[str, object]:
    """The numbers every finding of this check carries."""
    return {
        "probe_steps": probe.steps,
        "probe_lr": probe.lr,
        "lr_at_step_0": probe.lr_at_step_0,
        "probe_losses": [_finite_or_none(significant(x)) for x in probe.losses],
        "global_grad_norms": [significant(x) for x in probe.global_grad_norms],
        "grad_norm_by_module": {m: significant(v) for m, v in probe.grad_norm.items()},
        "update_ratio_by_module": {m: significant(v) for m, v in probe.update_ratio.items()},
        "modality_share": {m: round(v, 4) for m, v in overfit.modality_share.items()},
        "modality_share_from": overfit.attribution,
        "overfit_lr": OVERFIT_LR,
        "overfit_steps": overfit.steps,
        "overfit_loss_start": _finite_or_none(overfit.losses[0]) if overfit.losses else None,
        "overfit_loss_end": _finite_or_none(overfit.losses[-1]) if overfit.losses else None,
        "overfit_ideal_loss": _finite_or_none(overfit.ideal_loss),
        "overfit_progress": _finite_or_none(round(overfit.progress, 4)),
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _grad_norms(
    ctx: DiagnosisContext, params: dict[str, nn.Parameter]
) -> dict[str, tuple[float, float]]:
    """Per group: the gradient's L2 norm and its per-element RMS (missing gradients count 0)."""
    squares: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name, p in params.items():
        module = ctx.parameter_group(name)
        if p.grad is not None:
            squares[module] = squares.get(module, 0.0) + float(
                p.grad.detach().float().square().sum()
            )
        else:
            squares.setdefault(module, 0.0)
        sizes[module] = sizes.get(module, 0) + p.numel()
    return {m: (math.sqrt(s), math.sqrt(s / sizes[m])) for m, s in squares.items()}


def _update_ratios(
    ctx: DiagnosisContext, params: dict[str, nn.Parameter], before: dict[str, Tensor]
) -> dict[str, float]:
    """Per group: ||w_after - w_before|| / ||w_before||."""
    moved: dict[str, float] = {}
    size: dict[str, float] = {}
    for name, p in params.items():
        module = ctx.parameter_group(name)
        change = (p.detach() - before[name]).float()
        moved[module] = moved.get(module, 0.0) + float(change.square().sum())
        size[module] = size.get(module, 0.0) + float(before[name].float().square().sum())
    # an all-zero module (zero-initialised on purpose) has no ratio
    return {m: math.sqrt(moved[m] / size[m]) for m in moved if size[m] > 0}


def _ablation(ctx: DiagnosisContext, model: nn.Module, batch: StepBatch) -> dict[str, float]:
    """How far the loss moves when one stream is shuffled across the batch (each sample gets
    another's), the rest kept: 0 for a stream the model cannot tell samples apart by."""
    streams = streams_of(batch.inputs)
    shift = torch.roll(torch.arange(len(batch)), 1).to(ctx.device)
    with torch.no_grad():
        base = float(ctx.step_loss(model, batch))
        moved = {}
        for name in streams:
            shuffled = _replace_stream(batch.inputs, name, streams[name][shift])
            loss = float(ctx.step_loss(model, StepBatch(shuffled, batch.labels, batch.indices)))
            moved[name] = abs(loss - base) if math.isfinite(loss) else 0.0
    return moved


def _replace_stream(inputs, name: str, value: Tensor):
    """`inputs` with the stream called `name` (see `streams_of`) replaced by `value`."""
    if isinstance(inputs, Tensor):
        return value
    if isinstance(inputs, dict):
        return {**inputs, name: value}
    index = int(name[len("input[") : -1])
    items = list(inputs)
    items[index] = value
    return type(inputs)(items)


def _backward(
    ctx: DiagnosisContext,
    optimizer: torch.optim.Optimizer,
    params: dict[str, nn.Parameter],
    loss: Tensor,
    batch: StepBatch,
    where: str,
) -> NonFinite | None:
    """Backpropagate `loss` into fresh gradients; where NaN/Inf appeared, if anywhere."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bad = _non_finite_modules(ctx, params, loss)
    if bad is None:
        return None
    return NonFinite(where, loss.item(), bad, _non_finite_inputs(batch))


def _non_finite_modules(
    ctx: DiagnosisContext, params: dict[str, nn.Parameter], loss: Tensor
) -> list[str] | None:
    """Groups with a NaN/Inf gradient, or None when the loss and every gradient are finite."""
    bad = sorted(
        {
            ctx.parameter_group(name)
            for name, p in params.items()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        }
    )
    if bad or not bool(torch.isfinite(loss)):
        return bad
    return None


def _non_finite_inputs(batch: StepBatch) -> list[str]:
    """Streams whose input tensor in `batch` holds NaN/Inf."""
    return [
        name
        for name, value in streams_of(batch.inputs).items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _without_gradient(
    ctx: DiagnosisContext, params: dict[str, nn.Parameter]
) -> dict[str, list[str]]:
    """Trainable parameters whose gradient is missing or exactly zero, by group."""
    missing: dict[str, list[str]] = {}
    for name, p in params.items():
        if p.grad is None or not bool(p.grad.any()):
            missing.setdefault(ctx.parameter_group(name), []).append(name)
    return missing
