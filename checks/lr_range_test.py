"""lr-range-test: does the loss respond to the learning rate, and which learning rate is good?"""

from __future__ import annotations

import math
from collections.abc import Iterator

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Finding, Severity
from quad_doctor.lr_range import RESPONSE, RangeTest, lr_range_test


class LRRangeTest(Check):
    """An LR range test on a copy of the real model: suggestion, warm-up start and verdict.

    What it checks:
        Trains a copy of the model on the trainer's own batches (its sampler, loss, optimizer
        and, on CUDA, mixed precision) for at most 100 steps while the learning rate grows
        exponentially over a span set by the weights' typical size (7e-6 … 2.3e-2 on the
        default). After every step it measures the loss on one held-out batch of the same
        sampler, so the curve moves only when the model does. The sweep stops on NaN/Inf, on
        divergence, and when the held-out loss climbs back half of its descent or to ln(B-1).
        The valley runs from where that loss first falls below min(untrained loss, ln(B-1)) to
        its lowest point; the suggested learning rate is the valley's geometric middle and the
        warm-up start two decades below it. The verdict on `train.learning_rate` is `ok`,
        `too-high` (past the valley's end), `too-low` (the whole schedule moves the weights less
        than the sweep had when its loss began to fall), or `not-lr` (no valley at all).
        Reliability is the valley's depth against the training loss's batch-to-batch noise.

    Why it matters:
        The original team lowered the learning rate from 1e-4 to 1e-6 to 1e-10 for days while
        the loss sat at ln(31) = 3.4340: the learning rate was never the cause. With single-class
        batches the loss cannot fall below ln(B-1) at any learning rate, and this check says so
        (`not-lr`, no suggestion) instead of proposing a number. When the learning rate does
        matter it measures a good one in seconds, where a grid search takes minutes.

    Example:
        `--set train.sampler=sequential`: "the loss does not respond to the learning rate: across
        7e-06 … 0.023 the held-out loss never falls below ln(31) = 3.4340; every batch the sweep
        trained on holds one class". `--set train.learning_rate=30`: "learning_rate 30 is past
        the valley's end (0.0065)", with the suggestion as the patch.

    Fix:
        For `not-lr`, fix what the finding points at (the sampler, the loss bounds, the data)
        and leave the learning rate alone. Otherwise set `train.learning_rate` to the suggestion
        and `train.warmup_start_lr` to the warm-up start (`quad-doctor lr-range-test` prints the
        curve; `--plot` draws it).
    """

    name = "lr-range-test"
    phase = "probe"
    order = 70

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        if ctx.optimizer is None:
            raise SkipCheck("no parameter is trainable, so no learning rate applies")
        test = lr_range_test(ctx, **ctx.options.get(self.name, {}))
        published = test.to_dict()
        ctx.published["lr_range_test"] = published
        yield from self._verdict(test, published, ctx)

    def _verdict(
        self, test: RangeTest, published: dict, ctx: DiagnosisContext
    ) -> Iterator[Finding]:
        """`published` is `test.to_dict()`: the rounded figures the JSON report carries."""
        sweep = test.sweep
        evidence = {
            "verdict": test.verdict,
            "learning_rate": test.configured_lr,
            "suggested_lr": published["suggested_lr"],
            "warmup_start_lr": published["warmup_start_lr"],
            "valley": test.valley,
            "swept": f"{sweep.lr[0]:.2g} … {sweep.lr[-1]:.2g}" if sweep.lr else "",
            "iterations": published["iterations"],
            "stop_reason": sweep.stop_reason,
            "held_out_loss_min": round(test.min_loss, 4),
            "collapse_value": round(sweep.collapse_value, 4),
            "reliability": test.reliability,
            "depth_over_noise": round(test.snr, 1) if test.snr < 1e6 else None,
        }
        if test.verdict == "not-lr":
            yield self._not_lr(test, evidence, ctx)
            return
        if test.verdict == "ok":
            return
        suggested, warmup = evidence["suggested_lr"], evidence["warmup_start_lr"]
        patch: dict[str, object] = {}
        code, setup_patch = "", None
        if ctx.config is not None:
            patch = {"train.learning_rate": suggested, "train.warmup_start_lr": warmup}
            if ctx.config.train.min_lr > warmup:
                patch["train.min_lr"] = warmup
            remedy = (
                f"Set train.learning_rate to {suggested:.2g} (the valley's middle) and warm up "
                f"from {warmup:.2g}."
            )
        else:
            remedy = (
                f"Use lr={suggested:.2g} (the valley's middle) and, with a warm-up, start it at "
                f"{warmup:.2g}."
            )
            kind = type(ctx.optimizer).__name__
            code = f"optimizer = torch.optim.{kind}(params, lr={suggested:.2g}, ...)"
            scheduler = ctx.setup.scheduler
            if scheduler is None or not hasattr(scheduler, "step"):
                factory = ctx.optimizer_factory(suggested)

                def setup_patch(setup):
                    return setup.replace(optimizer=factory)
            else:
                remedy += (
                    " (Not verified: the scheduler instance is bound to the current optimizer; "
                    "pass a factory `optimizer -> scheduler` to let the doctor try the change.)"
                )
        lr = test.configured_lr
        # a valley a step or two wide, or shallow against the noise, suggests but does not judge
        confident = test.reliability != "low"
        if test.verdict == "too-high":
            end = test.valley["end_lr"] if test.valley else None
            where = f"the valley's end ({end:.2g})" if end else f"the sweep ({sweep.lr[-1]:.2g})"
            yield Finding(
                self.name,
                Severity.ERROR if confident else Severity.INFO,
                f"learning_rate {lr:.2g} is too high: it lies past {where}, where the loss "
                f"climbs back; it falls best around {suggested:.2g}",
                evidence,
                remedy,
                patch,
                code_change=code,
                setup_patch=setup_patch,
            )
            return
        evidence["training_movement"] = published["training_movement"]
        evidence["sweep_movement"] = published["sweep_movement"]
        evidence["movement_measure"] = published["movement_measure"]
        if test.too_low_because == "decades":
            bottom = test.valley["bottom_lr"]
            title = (
                f"learning_rate {lr:.2g} is too low: it lies {math.log10(bottom / lr):.1f} "
                f"decades under the valley's bottom ({bottom:.2g}); it falls best around "
                f"{suggested:.2g}"
            )
        else:
            bound = "at most " if not test.sweep.movement else ""
            title = (
                f"learning_rate {lr:.2g} is too low: the whole schedule moves the weights by "
                f"{bound}{test.training_movement:.2g}, while the sweep's loss began to fall only "
                f"after {test.sweep_movement:.2g}; it falls best around {suggested:.2g}"
            )
        yield Finding(
            self.name,
            Severity.WARNING if confident else Severity.INFO,
            title,
            evidence,
            remedy,
            patch,
            code_change=code,
            setup_patch=setup_patch,
        )

    def _not_lr(self, test: RangeTest, evidence: dict, ctx: DiagnosisContext) -> Finding:
        sweep = test.sweep
        evidence["single_class_batches"] = f"{sweep.single_class_batches}/{sweep.batches}"
        evidence["batches_without_positives"] = f"{sweep.batches_without_positives}/{sweep.batches}"
        size = ctx.batch_size
        span = evidence["swept"]
        if sweep.stop_reason == "nan" and len(sweep.lr) < 3:
            title = f"the loss is NaN/Inf from the first steps, at lr {sweep.first_lr:.2g}"
            cause = "non-finite values come from the data or the model, not the learning rate"
            remedy = "Fix the non-finite inputs (see data-integrity); the LR is not the cause."
        elif sweep.stop_reason == "nan":
            at = len(sweep.lr)
            title = (
                f"the sweep stopped at step {at}: the loss became NaN/Inf at lr "
                f"{sweep.lr[-1]:.2g} before any valley showed"
            )
            cause = "a NaN/Inf loss at a learning rate too small to diverge"
            remedy = (
                "Find where the loss turns non-finite (a batch without a positive pair makes a "
                "SupCon that averages over anchors 0/0; see sampler-class-mix), then sweep again."
            )
        elif sweep.batches and sweep.batches_without_positives == sweep.batches:
            title = "the loss does not respond to the learning rate: no batch has a positive pair"
            cause = "SupCon is 0 without positives"
            remedy = "Make batches hold two or more samples of a class (see sampler-class-mix)."
        elif sweep.batches and sweep.single_class_batches * 2 > sweep.batches:
            title = (
                f"the loss does not respond to the learning rate: across {span} the held-out loss "
                f"never falls below {collapse_name(size, sweep.collapse_value)}; "
                f"{sweep.single_class_batches} of the {sweep.batches} batches the sweep trained "
                "on hold one class"
            )
            cause = "single-class batches pin SupCon at ln(B-1)"
            remedy = (
                "Fix the sampler (see sampler-class-mix and loss-bounds); no learning rate can "
                "lower a loss pinned at ln(B-1)."
            )
        else:
            title = (
                f"the loss does not respond to the learning rate: across {span} the held-out loss "
                f"stays within {RESPONSE} of {test.reference:.4f} (lowest {test.min_loss:.4f})"
            )
            remedy = (
                "Look upstream, not at the learning rate: data-integrity, loss-bounds, "
                "frozen-parameters and gradient-flow; or sweep longer (--iters, --repeats)."
            )
            # no cause in sight: a warning, since a short sweep can miss a narrow valley
            evidence["cause"] = "none identified"
            return Finding(self.name, Severity.WARNING, title, evidence, remedy)
        evidence["cause"] = cause
        return Finding(self.name, Severity.ERROR, title, evidence, remedy)


def collapse_name(batch_size: int, collapse: float) -> str:
    """`ln(31) = 3.4340` when the measured collapse value is SupCon's ln(B-1), else the value."""
    if batch_size > 2 and abs(collapse - math.log(batch_size - 1)) < 1e-3:
        return f"ln({batch_size - 1}) = {collapse:.4f}"
    return f"its collapse value {collapse:.4f}"
