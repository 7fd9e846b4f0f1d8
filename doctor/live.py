"""The live doctor: watches every training step and keeps a live report, in any training loop.

`Monitor` is the doctor itself and knows no trainer: whoever runs the loop describes the run once
(`Run`) and hands it each step twice, before the optimizer applies it (`pre_update`: the loss,
the batch's labels, the gradients) and after (`post_update`: the features, the update). The
embedded trainer's callback (`LiveDoctor`), the plain-loop API (`quad_doctor.Watch`) and the
Lightning and Hugging Face callbacks (`quad_doctor.integrations`) are thin adapters over it.

Cheap measurements (the batch's labels, the loss, the LR, the features' spread) run every step;
gradient norms and the update-to-weight ratio run every k steps, k being set from each measured
step's cost to keep them within their budget share of the step time; the cheap records are built
and judged in groups (of 8 steps at first, then of 32). Findings go through the same ranking
as `diagnose`; each new finding (or a worse one from the same rule) becomes a line in
`events.jsonl`, flushed at once, and `report.json` is rewritten atomically at every epoch end and
after a critical event; `report.html` joins it when training ends or the doctor stops it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.text import Text
from torch import Tensor, nn

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.context import (
    PAIRLESS_ROOM,
    LossBounds,
    isolated_rng,
    manifest_class_counts,
    probe_loss_bounds,
    sizes_key,
    top_level_group,
    weight_scale,
)
from quad_doctor.engine import describe_run
from quad_doctor.findings import CheckRun, Finding, Report, Severity, Verification, rank_findings
from quad_doctor.reports import json as json_report
from quad_doctor.rules import LIVE_RULES
from quad_doctor.rules.base import GradientSummary, Rule, RunFacts, StepRecord
from quad_doctor.trainer.build import build_sampler
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.embedded import quad_module_of
from quad_doctor.trainer.losses import supcon_collapse_value
from quad_doctor.trainer.rundir import JsonLines

if TYPE_CHECKING:
    from rich.console import RenderableType

    from quad_doctor.trainer.dataset import Batch
    from quad_doctor.trainer.loop import Trainer
    from quad_doctor.trainer.losses import SupConOutput

# The share of the step time the every-k measurements may add; the cheap per-step part costs
# about 1 % on its own (docs/benchmarks.md), and the whole doctor's ceiling is 2 %.
BUDGET = 0.005
# Gradient norms and update ratios every k steps: Cockpit measured ~1.04x at every 16th step.
# The first steps are always measured: an LR that replaces the weights does so at step 0.
EXPENSIVE_EVERY = 16
MAX_EVERY = 1024
ALWAYS_MEASURED_STEPS = 3
# Per-step curves kept for the report; past this many points every other one is dropped.
MAX_POINTS = 4000
# Steps are judged in groups (sooner at measured and non-finite steps): of 8 over the first 64
# steps, where set-up faults show, then of 32; a rule speaks at most that many steps after the
# step that made it fire. Right after a backward pass the caches hold the model, and a group's
# first record costs ~0.7 ms against ~20 us for the next ones (measured in a Lightning run), so
# larger groups cut the judging's cost per step.
JUDGE_EVERY = 8
LATE_JUDGE_EVERY = 32
EARLY_STEPS = 64
SERIES = ("step", "loss", "lr", "floor", "classes", "spread", "rank_grad_norm")
SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.INFO: "cyan",
}
# Remedies speak the embedded trainer's config keys; in a user's loop they speak of what the keys
# stand for.
USER_WORDS = {
    "train.learning_rate": "the learning rate",
    "train.warmup_epochs": "the warm-up",
    "train.temperature": "the loss's temperature",
    "model.fusion.l2_normalize": "the L2 normalisation of the outputs",
    "model.fusion.dim": "the output width",
    "train.lr_scheduler and its keys": "one scheduler",
    "dist.gather_features = false": "a loss over each rank's batch alone",
}

# Inspects the batches of the given ranks at a step gone non-finite: their sample ids, and per
# input stream the ids of the samples holding NaN/Inf.
Inspect = Callable[[list[int]], tuple[list[str], dict[str, list[str]]]]


@dataclass
class Run:
    """What the live doctor knows of a run, from whichever loop runs it (fixed at its start).

    Everything but `run_dir` is optional: what is missing turns the rules that need it off
    (no `loss_fn`: no loss bounds; no `scheduled_lr`: the optimizer's LR is the schedule).
    """

    run_dir: Path
    model: nn.Module | None = None
    # `loss_fn(outputs, labels)` -> scalar: probed for the floor and collapse value of each
    # batch's mix of classes, as the pre-flight loss-bounds check probes it
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    config: Config | None = None  # the embedded trainer's: remedies are config patches
    num_classes: int = 0  # 0: not known up front
    steps_per_epoch: int = 0  # 0: not known
    num_epochs: int | None = None
    batch_size: int | None = None
    warmup_steps: int = 0
    scheduled_lr: Callable[[int], float] | None = None  # the schedule's LR at a step
    gather_features: bool = True  # distributed: one loss over every rank's batch
    sampler: str = ""  # the batch sampler's class, as findings name it
    module_of: Callable[[str], str] = top_level_group  # a parameter's module, for per-module norms
    # the outputs the loss sees: width, row norm, whether the model fixes the norm (None: taken
    # from the first outputs the loop hands in)
    output_width: int | None = None
    output_norm: float | None = None
    fixed_norm: bool | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    context: dict[str, Any] = field(default_factory=dict)  # the report's header
    measurements: dict[str, Any] = field(default_factory=dict)
    say: Callable[[RenderableType], None] | None = None  # prints the doctor's event lines


@dataclass
class _Step:
    """What the hot path keeps of one step until `_flush` judges it."""

    step: int
    epoch: int
    loss: float
    labels: Tensor | np.ndarray
    indices: np.ndarray | None
    applied_lr: list[float]
    rank_labels: list[np.ndarray] | None = None  # distributed: every rank's batch labels
    rank_grad_norms: list[float] | None = None  # distributed: each rank's own gradient norm
    features: Tensor | None = None
    update_ratio: dict[str, float] | None = None
    record: StepRecord | None = None  # built at once for measured and non-finite steps


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def user_words(text: str) -> str:
    """A remedy in the embedded trainer's config keys, in words for a user's own loop."""
    for key, words in USER_WORDS.items():
        text = text.replace(key, words)
    return text


class Monitor:
    """The live doctor for any loop: `start(run)`, then `pre_update` and `post_update` each step,
    then `finish`.

    `stop_on`: at the first finding at or above this severity, `stop_reason` is set (the loop
    stops on it). `context`: extra header fields for the report.
    """

    def __init__(
        self,
        stop_on: Severity | None = None,
        context: dict[str, Any] | None = None,
        budget: float = BUDGET,
        verify: Callable[[Finding, Any], Verification] | None = None,
    ) -> None:
        self.stop_on = stop_on
        self.extra_context = dict(context or {})
        self.budget = budget
        self.verify = verify
        self.every = EXPENSIVE_EVERY
        self.findings: dict[tuple[str, str], Finding] = {}
        self.events: list[dict[str, Any]] = []
        self.series: dict[str, list[float]] = {name: [] for name in SERIES}
        self.stride = 1  # the series keeps every stride-th step
        self.rule_time: dict[str, float] = {}
        self.doctor_time = 0.0
        self.step_time = 0.0  # EMA of the wall time between step ends
        self.cheap_time = 0.0  # EMA of the doctor's time on an unmeasured step
        self.status = "running"
        self.stop_reason = ""
        self.steps_seen = 0
        self.last_step = -1
        self.last_epoch = 0
        self._measured_cost = 0.0
        self._verified: dict[str, Verification] = {}

    # -- set-up ----------------------------------------------------------------------------------

    def start(self, run: Run, first_step: int = 0) -> None:
        """Take the run's description; a resume at `first_step` drops the events after it."""
        self.run = run
        self.run_dir = Path(run.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.event_log = JsonLines(self.run_dir / "events.jsonl")
        # A fresh run starts an empty log (there to tail); a resume drops the events after its
        # checkpoint, which happen again.
        self.event_log.keep(lambda row: row["step"] < first_step)
        model = run.model
        self.named = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad] if model else []
        )
        self.weights = [p.detach() for _, p in self.named]  # views: they follow every update
        modules = sorted({run.module_of(n) for n, _ in self.named})
        self.module_index = {
            m: [i for i, (n, _) in enumerate(self.named) if run.module_of(n) == m] for m in modules
        }
        self.module_size = {
            m: sum(self.named[i][1].numel() for i in idx) for m, idx in self.module_index.items()
        }
        self.facts = RunFacts(
            config=run.config,
            num_classes=run.num_classes,
            steps_per_epoch=run.steps_per_epoch or 10**9,
            warmup_steps=run.warmup_steps,
            weight_scale=(weight_scale(model) if model else None) or 1.0,
            modules=tuple(modules),
            gather_features=run.gather_features,
            scheduled=run.scheduled_lr is not None,
            bounds=run.loss_fn is not None,
            pair_based=True,  # measured on the first batch when the loss is known
            sampler=run.sampler,
        )
        self.rules: list[Rule] | None = None  # built at the first step, when the loss is probed
        self.batch_size = run.batch_size
        self.collapse_value = supcon_collapse_value(run.batch_size) if run.batch_size else None
        self.order = {check.name: check.order for check in ALL_CHECKS}
        self.order |= {rule.name: rule.order for rule in LIVE_RULES}
        self._pending: list[_Step] = []
        self._probed: dict[tuple[int, ...], LossBounds] = {}
        self._before: list[Tensor] | None = None
        # measured by `gradients_ready`, for the step it names
        self._gradients_now: tuple[int, GradientSummary] | None = None
        self._measuring = False
        self._last_end: float | None = None

    def _build_rules(self, labels: np.ndarray) -> None:
        if self.run.loss_fn is not None and self.run.output_width is not None:
            self.facts = dataclasses.replace(self.facts, pair_based=self._pair_based(labels))
        self.rules = [rule(self.facts) for rule in LIVE_RULES if rule.applies(self.facts)]

    def _pair_based(self, labels: np.ndarray) -> bool:
        """Whether the loss learns from pairs (see `DiagnosisContext.pair_based`): probed with a
        batch of distinct classes, one output column per class."""
        classes = np.unique(labels)
        if len(classes) < 2:
            return True
        try:
            with isolated_rng(self.run.seed):
                bounds = probe_loss_bounds(
                    self.run.loss_fn, classes, int(classes.max()) + 1, 1.0, False, self.run.seed,
                    self.run.device,
                )  # fmt: skip
        except Exception:  # a loss with its own projection of a fixed width
            return True
        room = bounds.collapse - bounds.floor
        return not math.isfinite(room) or room < PAIRLESS_ROOM

    # -- every step ------------------------------------------------------------------------------

    def measured(self, step: int) -> bool:
        """Whether this step's gradients and update are measured (every k-th, and the first)."""
        return step < ALWAYS_MEASURED_STEPS or step % self.every == 0

    def gradients_ready(self, step: int) -> None:
        """For loops that see the gradients before the loss (Lightning): on measured steps,
        measure them and keep the weights now, for `pre_update` to use."""
        if self.named and self.measured(step):
            started = time.perf_counter()
            self._gradients_now = (step, self._gradients())
            self._keep_weights()
            self._charge(started, True)

    def pre_update(
        self,
        step: int,
        epoch: int,
        loss: float,
        labels: Tensor | np.ndarray,
        applied_lr: list[float],
        *,
        indices: np.ndarray | None = None,
        outputs: Tensor | None = None,
        rank_labels: list[np.ndarray] | None = None,
        rank_losses: list[float] | None = None,
        world_size: int = 1,
        inspect: Inspect | None = None,
    ) -> None:
        """One step, its gradients final and its update not yet applied.

        The hot path keeps references and does no arithmetic: right after backward the CPU's
        caches hold the model, and every line of Python costs ~10x what it does warm (measured:
        40 us for a count_nonzero on 32 labels), so records are built and judged in `_flush`.
        """
        started = time.perf_counter()
        if self.rules is None:
            self._first_step(labels, outputs)
        data = _Step(step, epoch, loss, labels, indices, applied_lr, rank_labels)
        self._pending.append(data)
        self.last_step, self.last_epoch = step, epoch
        measured = self.named and self.measured(step)
        ready, self._gradients_now = self._gradients_now, None
        gradients = ready[1] if ready is not None and ready[0] == step else None
        # each rank's own loss, or one loss over every rank's batch (`gather_features`)
        losses = rank_losses or [loss]
        bad_ranks = [rank for rank, value in enumerate(losses) if not math.isfinite(value)]
        suspects = bad_ranks if rank_losses else list(range(world_size))
        if measured or bad_ranks or not math.isfinite(loss):
            # judged now, while the loop can still skip the update
            record = self._record(data)
            if self.named:
                record.gradients = gradients or self._gradients()
            bad_gradients = record.gradients is not None and record.gradients.non_finite
            if (bad_ranks or not math.isfinite(loss) or bad_gradients) and inspect is not None:
                record.sample_ids, record.non_finite_inputs = inspect(suspects)
                if rank_losses:
                    record.non_finite_ranks = bad_ranks
            data.record = record
            self._judge("before_update", record)
        if measured and gradients is None:
            self._keep_weights()
        self._measuring = bool(measured)
        self._charge(started, bool(measured))

    def post_update(
        self,
        step: int,
        features: Tensor | None = None,
        rank_grad_norms: list[float] | None = None,
    ) -> None:
        """The same step once the optimizer has applied it (or skipped it)."""
        started = time.perf_counter()
        if not self._pending or self._pending[-1].step != step:
            return
        data = self._pending[-1]
        if features is not None:
            data.features = features.detach()
        data.rank_grad_norms = rank_grad_norms
        measured, self._measuring = self._measuring, False
        if measured:
            data.update_ratio = self._update_ratio()
        group = JUDGE_EVERY if step < EARLY_STEPS else LATE_JUDGE_EVERY
        if measured or len(self._pending) >= group:
            self._flush()
        self._charge(started, measured)
        now = time.perf_counter()
        if self._last_end is not None:
            elapsed = now - self._last_end
            self.step_time = elapsed if not self.step_time else 0.9 * self.step_time + 0.1 * elapsed
        self._last_end = now
        if measured:
            self._rebudget()

    def pause(self) -> None:
        """Time outside the steps (validation, an epoch's start) is not step time."""
        self._last_end = None

    def _first_step(self, labels: Tensor | np.ndarray, outputs: Tensor | None) -> None:
        """What the first step shows of the run: the outputs' shape and norm, for the probe."""
        run = self.run
        if outputs is not None and run.output_width is None:
            values = outputs.detach().float()
            if values.ndim == 2 and len(values) == len(labels) and bool(values.isfinite().all()):
                norms = torch.linalg.vector_norm(values, dim=1)
                run.output_width = values.shape[1]
                run.output_norm = float(norms.median())
                spread = float(norms.std() / norms.mean().clamp_min(1e-12)) if len(norms) > 1 else 0
                run.fixed_norm = spread < 1e-3
        if run.output_width is None:
            self.facts = dataclasses.replace(self.facts, bounds=False)
        first = _numpy(labels)
        self._build_rules(first)
        self.batch_size = run.batch_size or len(first)
        bounds = self._bounds(first, np.bincount(first)) if len(first) > 1 else None
        # the collapse value the report draws beside the loss
        if not self.facts.pair_based or self.batch_size < 2:
            self.collapse_value = None  # ln(B-1) is a pair-based loss's
        elif bounds is not None and run.config is None:
            self.collapse_value = bounds.collapse
        else:
            self.collapse_value = supcon_collapse_value(self.batch_size)

    def _bounds(self, labels: np.ndarray, counts: np.ndarray) -> LossBounds | None:
        """The loss's collapse value and floor for these labels, probed from the run's own loss as
        the pre-flight loss-bounds check probes it; cached by the batch's class sizes (`counts`:
        the labels' `np.bincount`, which the caller has made)."""
        run = self.run
        if run.loss_fn is None or run.output_width is None:
            return None
        key = sizes_key(counts)
        if key not in self._probed:
            try:
                self._probed[key] = probe_loss_bounds(
                    run.loss_fn, labels, run.output_width, run.output_norm or 1.0,
                    bool(run.fixed_norm), run.seed, run.device,
                )  # fmt: skip
            except Exception as error:  # a loss the probe cannot call: no bounds from here on
                run.loss_fn = None
                if run.say is not None:
                    run.say(
                        Text(f"doctor: loss_fn cannot be probed ({error}); no loss bounds", "dim")
                    )
                return None
        return self._probed[key]

    def _record(self, data: _Step) -> StepRecord:
        labels = _numpy(data.labels)
        if data.rank_labels is not None and self.facts.gather_features:
            labels = np.concatenate(data.rank_labels)  # what the loss was computed over
        counts = np.bincount(labels)
        positives = counts[labels] - 1
        has = positives[positives > 0]
        bounds = self._bounds(labels, counts)
        scheduled = self.run.scheduled_lr
        return StepRecord(
            step=data.step,
            epoch=data.epoch,
            lr=scheduled(data.step) if scheduled else data.applied_lr[0],
            applied_lr=data.applied_lr,
            loss=data.loss,
            labels=labels,
            indices=data.indices if data.indices is not None else np.arange(len(labels)),
            classes=int(np.count_nonzero(counts)),
            positives=positives,
            floor=bounds.floor if bounds is not None and has.size else math.nan,
            collapse=bounds.collapse if bounds is not None and len(labels) > 1 else math.nan,
            rank_labels=data.rank_labels,
        )

    def _flush(self) -> None:
        """Build and judge the records of the steps seen since the last flush, in order."""
        pending, self._pending = self._pending, []
        spreads = _spreads([data.features for data in pending])
        for data, spread in zip(pending, spreads, strict=True):
            record = data.record
            if record is None:
                record = self._record(data)
                self._judge("before_update", record)
            record.update_ratio = data.update_ratio
            record.rank_grad_norms = data.rank_grad_norms
            if spread is not None:
                record.spread = spread
            self.steps_seen += 1
            self._remember(record)
            self._judge("after_update", record)

    def epoch_end(self) -> None:
        """Judge what is pending and rewrite `report.json`."""
        self._flush()
        self.write_report()

    def finish(self, status: str | None = None) -> Report:
        """Judge what is pending and write `report.json` and `report.html`: training ended
        (`finished`), the doctor stopped it (`stopped`), or something else did (`interrupted`)."""
        self._flush()
        self.status = status or ("stopped" if self.stop_reason else "finished")
        report = self.report()
        json_report.render(report, self.run_dir / "report.json")
        from quad_doctor.reports import html as html_report  # jinja2 and matplotlib: at the end

        html_report.render(report, self.run_dir / "report.html")
        return report

    # -- measurements ----------------------------------------------------------------------------

    def _keep_weights(self) -> None:
        """The weights before the update, into buffers kept between measurements."""
        if self._before is None:
            self._before = [torch.empty_like(w) for w in self.weights]
        torch._foreach_copy_(self._before, self.weights)

    def _gradients(self) -> GradientSummary:
        grads = [
            p.grad if p.grad is not None else torch.zeros((), device=p.device)
            for _, p in self.named
        ]
        # one fused kernel for all tensors, as clip_grad_norm_ does
        norms = torch.stack(torch._foreach_norm(grads)).double().cpu().tolist()
        module_norm = {
            m: math.sqrt(sum(norms[i] ** 2 for i in idx)) for m, idx in self.module_index.items()
        }
        return GradientSummary(
            total_norm=math.sqrt(sum(n * n for n in norms)),
            module_norm=module_norm,
            module_rms={m: v / math.sqrt(self.module_size[m]) for m, v in module_norm.items()},
            non_finite=[m for m, v in module_norm.items() if not math.isfinite(v)],
        )

    def _update_ratio(self) -> dict[str, float]:
        """|dw|/|w| per module for the step just taken, in place in the buffers."""
        assert self._before is not None
        weight = torch.stack(torch._foreach_norm(self._before)).double().cpu().tolist()
        torch._foreach_sub_(self._before, self.weights)
        delta = torch.stack(torch._foreach_norm(self._before)).double().cpu().tolist()
        ratio = {}
        for module, idx in self.module_index.items():
            moved = math.sqrt(sum(delta[i] ** 2 for i in idx))
            size = math.sqrt(sum(weight[i] ** 2 for i in idx))
            ratio[module] = moved / size if size > 0 else math.inf if moved > 0 else 0.0
        return ratio

    def _remember(self, record: StepRecord) -> None:
        if record.step % self.stride:
            return
        values = (
            record.step,
            record.loss,
            record.lr,
            record.floor,
            record.classes,
            record.spread,
            record.rank_grad_norms,  # None in one process
        )
        for name, value in zip(SERIES, values, strict=True):
            self.series[name].append(value)
        if len(self.series["step"]) > MAX_POINTS:
            self.stride *= 2
            for name in SERIES:
                kept = [
                    v
                    for s, v in zip(self.series["step"], self.series[name], strict=True)
                    if s % self.stride == 0
                ]
                self.series[name] = kept

    # -- findings --------------------------------------------------------------------------------

    def _judge(self, hook: str, record: StepRecord) -> None:
        for rule in self.rules or ():
            started = time.perf_counter()
            found = getattr(rule, hook)(record)
            self.rule_time[rule.name] = self.rule_time.get(rule.name, 0.0) + (
                time.perf_counter() - started
            )
            for finding in found:
                self._fire(finding, record)

    def _fire(self, finding: Finding, record: StepRecord) -> None:
        key = (finding.check, str(finding.evidence.get("signal", "")))
        known = self.findings.get(key)
        if known is not None and finding.severity <= known.severity:
            return
        if self.run.config is None:
            finding = dataclasses.replace(
                finding, title=user_words(finding.title), remedy=user_words(finding.remedy)
            )
        self.findings[key] = finding
        event = {
            "time": _now(),
            "step": record.step,
            "epoch": record.epoch,
            "rule": finding.check,
            "severity": str(finding.severity),
            "message": finding.title,
            "evidence": finding.evidence,
        }
        self.events.append(event)
        self.event_log.append(json_report.finite(event))
        if finding.severity >= Severity.WARNING and self.run.say is not None:
            line = Text(f"doctor  step {record.step}  ")
            line.append(str(finding.severity), style=SEVERITY_STYLE[finding.severity])
            line.append(f"  {finding.check}: {finding.title}")
            self.run.say(line)
        stop = self.stop_on is not None and finding.severity >= self.stop_on
        if stop and not self.stop_reason:
            self.stop_reason = (
                f"{finding.severity} {finding.check} at step {record.step}: {finding.title}"
            )
        if finding.severity >= Severity.CRITICAL:
            self.write_report()

    # -- budget ----------------------------------------------------------------------------------

    def _charge(self, started: float, measured: bool) -> None:
        spent = time.perf_counter() - started
        self.doctor_time += spent
        if measured:
            self._measured_cost += spent
        else:
            self.cheap_time = 0.9 * self.cheap_time + 0.1 * spent if self.cheap_time else spent

    def _rebudget(self) -> None:
        """Set k to the least power of two (from the default up) that keeps what measuring adds
        within the budget, from the last measured step's cost: at once, so a short run does not
        pay for a climb through every k below the one it needs."""
        measured_cost, self._measured_cost = self._measured_cost, 0.0
        if not self.step_time:
            return
        # k governs only what measuring adds; the cheap part is the same every step
        extra = max(0.0, measured_cost - self.cheap_time)
        needed = extra / (self.budget * self.step_time)  # the k at which it is exactly the budget
        every = EXPENSIVE_EVERY
        while every < needed and every < MAX_EVERY:
            every *= 2
        self.every = every

    @property
    def overhead_fraction(self) -> float:
        """The doctor's time per step over the step time (NaN before two steps have ended)."""
        if not self.step_time or not self.steps_seen:
            return math.nan
        return self.doctor_time / self.steps_seen / self.step_time

    # -- report ----------------------------------------------------------------------------------

    def report(self) -> Report:
        """The live report: the findings so far, ranked as `diagnose` ranks them."""
        findings = [self._verified_finding(f) for f in self.findings.values()]
        fired = {f.check for f in findings if f.severity >= Severity.WARNING}
        checks = tuple(
            CheckRun(name, "fail" if name in fired else "pass", round(seconds, 4))
            for name, seconds in self.rule_time.items()
        )
        return Report(
            findings=rank_findings(findings, self.order),
            checks=checks,
            context={**self.run.context, **self.extra_context},
            duration_s=self.doctor_time,
            training=self.training(),
            measurements=dict(self.run.measurements),
        )

    def write_report(self) -> Path:
        """Write `report.json` to the run directory, atomically."""
        path = self.run_dir / "report.json"
        json_report.render(self.report(), path)
        return path

    def _verified_finding(self, finding: Finding) -> Finding:
        """A patch is verified by re-running its pre-flight check on the patched config."""
        preflight = {check.name for check in ALL_CHECKS}
        config = self.run.config
        if self.verify is None or config is None or not finding.config_patch:
            return finding
        if finding.check not in preflight:
            return finding
        key = f"{finding.check}:{sorted(finding.config_patch.items())}"
        if key not in self._verified:
            with isolated_rng(config.train.seed):
                self._verified[key] = self.verify(finding, config)
        return dataclasses.replace(finding, verification=self._verified[key])

    def training(self) -> dict[str, Any]:
        """The report's `training` section: progress, curves, events, the doctor's own cost."""
        run = self.run
        metrics_file = self.run_dir / "metrics.jsonl"
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "stop_reason": self.stop_reason or None,
            "epoch": self.last_epoch,
            "num_epochs": run.num_epochs,
            "global_step": self.last_step + 1,
            "metrics": JsonLines(metrics_file).read() if metrics_file.exists() else [],
            **({"batch_size": self.batch_size} if self.batch_size else {}),
            **({"collapse_value": self.collapse_value} if self.collapse_value else {}),
            "steps": {name: list(values) for name, values in self.series.items()},
            "events": list(self.events),
            "doctor": {
                "time_s": round(self.doctor_time, 4),
                "overhead_fraction": self.overhead_fraction,
                "step_time_ms": 1000 * self.step_time,
                "expensive_every": self.every,
                "budget": self.budget,
                "steps_seen": self.steps_seen,
                "rules": [rule.name for rule in self.rules or ()],
            },
        }

    # -- status line -----------------------------------------------------------------------------

    def status_line(self) -> Text:
        """One line: quiet when nothing is wrong, the worst finding in colour when it is."""
        worst = max(self.findings.values(), key=lambda f: f.severity, default=None)
        if worst is None or worst.severity < Severity.WARNING:
            return Text("doctor: no findings", style="dim")
        others = sum(f.severity >= Severity.WARNING for f in self.findings.values()) - 1
        line = Text()
        line.append(f"doctor: {worst.severity}", style=SEVERITY_STYLE[worst.severity])
        colour = "red" if worst.severity >= Severity.ERROR else "yellow"
        line.append(f" {worst.check}: {worst.title}", style=colour)
        if others:
            line.append(f" (+{others} more, see report.json)", style="dim")
        return line

    @property
    def worst(self) -> Severity | None:
        """The worst severity found so far."""
        return max((f.severity for f in self.findings.values()), default=None)

    # -- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # plain data only: checkpoints are read with weights_only=True
        return {
            "findings": [_plain(finding) for finding in self.findings.values()],
            "events": self.events,
            "series": self.series,
            "stride": self.stride,
            "every": self.every,
            "doctor_time": self.doctor_time,
            "steps_seen": self.steps_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Rules start afresh (their windows refill within ~100 steps); what they found stays.
        if not state:
            return
        for data in state["findings"]:
            finding = Finding(**{**data, "severity": Severity(data["severity"])})
            self.findings[(finding.check, str(finding.evidence.get("signal", "")))] = finding
        self.events = state["events"]
        self.series = state["series"]
        self.stride = state["stride"]
        self.every = state["every"]
        self.doctor_time = state["doctor_time"]
        self.steps_seen = state["steps_seen"]


class LiveDoctor(Monitor, Callback):
    """The live doctor attached to the embedded `Trainer` (what `quad-doctor train` does).

    `stop_on`: stop training (state saved) at the first finding at or above this severity.
    `context`: extra header fields for the report (where the config came from).
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        assert trainer.run_dir is not None
        config = trainer.config
        fusion = config.model.fusion
        self.trainer = trainer
        self.sample_ids = trainer.dataset.sample_ids
        self.start(
            Run(
                run_dir=trainer.run_dir,
                model=trainer.model,
                loss_fn=lambda outputs, target: trainer.loss_fn(outputs, target).loss,
                config=config,
                num_classes=int(
                    np.count_nonzero(np.bincount(trainer.dataset.labels[trainer.train_rows]))
                ),
                steps_per_epoch=len(trainer.sampler),
                num_epochs=config.train.num_epochs,
                batch_size=config.train.batch_size,
                warmup_steps=trainer.schedule.warmup_steps,
                scheduled_lr=trainer.schedule.lr_at,
                gather_features=config.dist.gather_features,
                module_of=quad_module_of,
                output_width=fusion.dim,
                output_norm=1.0,
                fixed_norm=fusion.l2_normalize,
                seed=config.train.seed,
                device=trainer.device,
                context=describe_run(
                    config, trainer.dataset.directory, trainer.dataset.manifest, trainer.device
                ),
                measurements={"class_counts": manifest_class_counts(trainer.dataset.manifest)},
                say=trainer.console.print if trainer.show_progress else None,
            ),
            first_step=trainer.state.global_step,
        )

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.pause()  # validation between epochs is not step time

    def on_after_backward(
        self, trainer: Trainer, batch: Batch, output: SupConOutput, step: int
    ) -> None:
        self.pre_update(
            step,
            trainer.state.epoch,
            float(output.loss.detach()),
            batch.labels,
            [group["lr"] for group in trainer.optimizer.param_groups],
            indices=batch.indices,
            rank_labels=trainer.rank_labels,
            rank_losses=trainer.rank_losses,
            world_size=trainer.world.world_size,
            inspect=lambda ranks: self._inspect(trainer, ranks, batch),
        )
        self._stop(trainer)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        batch: Batch,
        features: Tensor,
        output: SupConOutput,
        step: int,
    ) -> None:
        self.post_update(step, features, trainer.rank_grad_norms)
        self._stop(trainer)

    def _stop(self, trainer: Trainer) -> None:
        if self.stop_reason and not trainer.should_stop:
            trainer.should_stop = True
            trainer.stop_reason = self.stop_reason

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self.epoch_end()
        self._stop(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        finished = trainer.state.epoch > trainer.config.train.num_epochs
        status = "finished" if finished else "interrupted"
        self.finish("stopped" if trainer.should_stop else status)

    def training(self) -> dict[str, Any]:
        trainer = self.trainer
        return super().training() | {
            "stop_reason": trainer.stop_reason or None,
            "epoch": trainer.state.epoch - 1,
            "global_step": trainer.state.global_step,
        }

    def _inspect(
        self, trainer: Trainer, ranks: list[int], batch: Batch
    ) -> tuple[list[str], dict[str, list[str]]]:
        """The sample ids of this step's batches on `ranks` (this rank's own, the others' found by
        replaying their samplers), and those holding NaN/Inf per modality."""
        rows = []
        for rank in ranks:
            if rank == trainer.world.rank:
                rows.append(batch.indices)
                continue
            sampler = build_sampler(
                trainer.config, trainer.dataset, rank=rank, world_size=trainer.world.world_size
            )
            sampler.set_epoch(trainer.state.epoch)
            rows.append(sampler.epoch_batches()[trainer.state.position])
        rows = np.concatenate(rows) if rows else batch.indices
        suspect = trainer.dataset.batch(rows)
        found = {}
        for modality in ("video", "audio", "sensor", "text"):
            values = getattr(suspect, modality)
            if values.is_floating_point():
                bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
                if bad.any():
                    bad_rows = suspect.indices[bad.cpu().numpy()]
                    found[modality] = [str(i) for i in self.sample_ids[bad_rows]]
        return [str(i) for i in self.sample_ids[rows]], found

    def progress_status(self, trainer: Trainer) -> Text | None:
        return self.status_line()


def non_finite_rows(inputs: Any, ids: list[str]) -> dict[str, list[str]]:
    """Per floating-point input stream of a batch (a tensor, or a dict/list of them), the ids of
    the rows holding NaN/Inf."""
    if isinstance(inputs, Tensor):
        streams = {"inputs": inputs}
    elif isinstance(inputs, dict):
        streams = {str(k): v for k, v in inputs.items()}
    elif isinstance(inputs, (list, tuple)):
        streams = {f"inputs[{i}]": v for i, v in enumerate(inputs)}
    else:
        return {}
    found = {}
    for name, values in streams.items():
        if not isinstance(values, Tensor) or not values.is_floating_point() or values.ndim == 0:
            continue
        if len(values) != len(ids):
            continue
        bad = ~torch.isfinite(values.detach().flatten(1)).all(dim=1)
        if bad.any():
            found[name] = [ids[i] for i in bad.nonzero().flatten().tolist()]
    return found


def _spreads(features: list[Tensor | None]) -> list[float | None]:
    """1 - |mean of the unit feature rows|^2 per step (0 when every row points the same way),
    for 2-D features; steps whose features have one shape are computed together."""
    spreads: list[float | None] = [None] * len(features)
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for i, f in enumerate(features):
        if f is not None and f.ndim == 2:
            by_shape.setdefault((tuple(f.shape), f.device, f.dtype), []).append(i)
    with torch.no_grad():
        for idx in by_shape.values():
            z = F.normalize(torch.stack([features[i] for i in idx]).float(), dim=2)
            centre = z.mean(dim=1)
            values = (1.0 - (centre * centre).sum(dim=1)).tolist()
            for i, value in zip(idx, values, strict=True):
                spreads[i] = value
    return spreads


def _numpy(labels: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(labels, Tensor):
        return labels.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _plain(finding: Finding) -> dict[str, Any]:
    return {
        "check": finding.check,
        "severity": int(finding.severity),
        "title": finding.title,
        "evidence": finding.evidence,
        "remedy": finding.remedy,
        "config_patch": finding.config_patch,
        "explains": tuple(finding.explains),
    }
