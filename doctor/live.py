"""The live doctor: a trainer callback that watches every step and keeps a live report.

Cheap measurements (the batch's labels, the loss, the LR, the features' spread) run every step;
gradient norms and the update-to-weight ratio run every k steps, and k doubles whenever the
doctor's own time passes its budget share of the step time. Findings go through the same ranking
as `diagnose`; each new finding (or a worse one from the same rule) becomes a line in
`events.jsonl`, flushed at once, and `report.json` is rewritten atomically at every epoch end,
after a critical event and when training ends.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.text import Text

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.context import (
    LossBounds,
    bounds_key,
    isolated_rng,
    manifest_class_counts,
    probe_loss_bounds,
    weight_scale,
)
from quad_doctor.engine import describe_run
from quad_doctor.findings import CheckRun, Finding, Report, Severity, Verification, rank_findings
from quad_doctor.reports import json as json_report
from quad_doctor.rules import LIVE_RULES
from quad_doctor.rules.base import GradientSummary, Rule, RunFacts, StepRecord
from quad_doctor.trainer.build import build_sampler
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.embedded import quad_module_of as module_of
from quad_doctor.trainer.losses import supcon_collapse_value
from quad_doctor.trainer.rundir import JsonLines

if TYPE_CHECKING:
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
# Steps are judged in groups of this many (sooner at measured and non-finite steps): a rule then
# speaks at most 8 steps after the step that made it fire.
JUDGE_EVERY = 8
SERIES = ("step", "loss", "lr", "floor", "classes", "spread", "rank_grad_norm")
SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.INFO: "cyan",
}


@dataclass
class _Step:
    """What the hot path keeps of one step until `_flush` judges it."""

    step: int
    epoch: int
    loss: float
    labels: torch.Tensor
    indices: np.ndarray
    applied_lr: list[float]
    rank_labels: list[np.ndarray] | None = None  # distributed: every rank's batch labels
    rank_grad_norms: list[float] | None = None  # distributed: each rank's own gradient norm
    features: torch.Tensor | None = None
    update_ratio: dict[str, float] | None = None
    record: StepRecord | None = None  # built at once for measured and non-finite steps


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class LiveDoctor(Callback):
    """Attach to a `Trainer` to diagnose training as it runs (what `quad-doctor train` does).

    `stop_on`: stop training (state saved) at the first finding at or above this severity.
    `context`: extra header fields for the report (where the config came from).
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
        self.steps_seen = 0
        self._measured_cost = 0.0
        self._verified: dict[str, Verification] = {}

    # -- set-up ----------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        assert trainer.run_dir is not None
        self.run_dir = trainer.run_dir
        self.event_log = JsonLines(self.run_dir / "events.jsonl")
        step = trainer.state.global_step
        # A fresh run starts an empty log (there to tail); a resume drops the events after its
        # checkpoint, which happen again.
        self.event_log.keep(lambda row: row["step"] < step)
        model = trainer.model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.weights = [p.detach() for _, p in self.named]  # views: they follow every update
        modules = sorted({module_of(n) for n, _ in self.named})
        self.module_index = {
            m: [i for i, (n, _) in enumerate(self.named) if module_of(n) == m] for m in modules
        }
        self.module_size = {
            m: sum(self.named[i][1].numel() for i in idx) for m, idx in self.module_index.items()
        }
        self.facts = RunFacts(
            config=trainer.config,
            num_classes=int(
                np.count_nonzero(np.bincount(trainer.dataset.labels[trainer.train_rows]))
            ),
            steps_per_epoch=len(trainer.sampler),
            warmup_steps=trainer.schedule.warmup_steps,
            weight_scale=weight_scale(model) or 1.0,
            modules=tuple(modules),
        )
        self.rules: list[Rule] = [rule(self.facts) for rule in LIVE_RULES]
        self.order = {check.name: check.order for check in ALL_CHECKS}
        self.order |= {rule.name: rule.order for rule in LIVE_RULES}
        self.sample_ids = trainer.dataset.sample_ids
        self.trainer = trainer
        self._pending: list[_Step] = []
        self._probed: dict[tuple[int, ...], LossBounds] = {}
        self._before: list[torch.Tensor] | None = None
        self._measuring = False
        self._last_end: float | None = None

    # -- every step ------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._last_end = None  # validation between epochs is not step time

    def on_after_backward(
        self, trainer: Trainer, batch: Batch, output: SupConOutput, step: int
    ) -> None:
        # The hot path: keep references, do no arithmetic. Right after backward the CPU's caches
        # hold the model, and every line of Python costs ~10x what it does warm (measured: 40
        # us for a count_nonzero on 32 labels), so records are built and judged in `_flush`.
        started = time.perf_counter()
        loss = float(output.loss.detach())
        step_data = _Step(
            step,
            trainer.state.epoch,
            loss,
            batch.labels,
            batch.indices,
            [group["lr"] for group in trainer.optimizer.param_groups],
            trainer.rank_labels,
        )
        self._pending.append(step_data)
        measured = step < ALWAYS_MEASURED_STEPS or step % self.every == 0
        # each rank's own loss, or one loss over every rank's batch (`dist.gather_features`)
        losses = trainer.rank_losses or [loss]
        bad_ranks = [rank for rank, value in enumerate(losses) if not math.isfinite(value)]
        suspects = bad_ranks if trainer.rank_losses else list(range(trainer.world.world_size))
        if measured or bad_ranks or not math.isfinite(loss):
            # judged now, while the doctor can still stop the update
            record = self._record(step_data)
            record.gradients = self._gradients()
            if bad_ranks or not math.isfinite(loss) or record.gradients.non_finite:
                rows = self._batch_rows(trainer, suspects, batch)
                record.sample_ids = [str(i) for i in self.sample_ids[rows]]
                record.non_finite_inputs = self._non_finite_inputs(trainer.dataset.batch(rows))
                if trainer.rank_losses:
                    record.non_finite_ranks = bad_ranks
            step_data.record = record
            self._judge("before_update", record)
        if measured:
            # the weights before the update, into buffers kept between measurements
            if self._before is None:
                self._before = [torch.empty_like(w) for w in self.weights]
            torch._foreach_copy_(self._before, self.weights)
            self._measuring = True
        self._charge(started, measured)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        batch: Batch,
        features: torch.Tensor,
        output: SupConOutput,
        step: int,
    ) -> None:
        started = time.perf_counter()
        if not self._pending or self._pending[-1].step != step:
            return
        self._pending[-1].features = features.detach()
        self._pending[-1].rank_grad_norms = trainer.rank_grad_norms
        measured, self._measuring = self._measuring, False
        if measured:
            self._pending[-1].update_ratio = self._update_ratio()
        if measured or len(self._pending) >= JUDGE_EVERY:
            self._flush()
        self._charge(started, measured)
        now = time.perf_counter()
        if self._last_end is not None:
            elapsed = now - self._last_end
            self.step_time = elapsed if not self.step_time else 0.9 * self.step_time + 0.1 * elapsed
        self._last_end = now
        if measured:
            self._rebudget()

    def _bounds(self, labels: np.ndarray) -> LossBounds:
        """The loss's collapse value and floor for these labels, probed from the trainer's own
        loss as the pre-flight loss-bounds check probes it; cached by the batch's class sizes."""
        key = bounds_key(labels)
        if key not in self._probed:
            trainer = self.trainer
            fusion = trainer.config.model.fusion
            self._probed[key] = probe_loss_bounds(
                lambda outputs, target: trainer.loss_fn(outputs, target).loss,
                labels, fusion.dim, 1.0, fusion.l2_normalize, trainer.config.train.seed,
                trainer.device,
            )  # fmt: skip
        return self._probed[key]

    def _record(self, data: _Step) -> StepRecord:
        labels = data.labels.cpu().numpy()
        if data.rank_labels is not None and self.facts.config.dist.gather_features:
            labels = np.concatenate(data.rank_labels)  # what the loss was computed over
        counts = np.bincount(labels)
        positives = counts[labels] - 1
        has = positives[positives > 0]
        return StepRecord(
            step=data.step,
            epoch=data.epoch,
            lr=self.trainer.schedule.lr_at(data.step),
            applied_lr=data.applied_lr,
            loss=data.loss,
            labels=labels,
            indices=data.indices,
            classes=int(np.count_nonzero(counts)),
            positives=positives,
            floor=self._bounds(labels).floor if has.size else math.nan,
            collapse=self._bounds(labels).collapse if len(labels) > 1 else math.nan,
            rank_labels=data.rank_labels,
        )

    def _flush(self) -> None:
        """Build and judge the records of the steps seen since the last flush, in order."""
        pending, self._pending = self._pending, []
        for data in pending:
            record = data.record
            if record is None:
                record = self._record(data)
                self._judge("before_update", record)
            record.update_ratio = data.update_ratio
            record.rank_grad_norms = data.rank_grad_norms
            if data.features is not None:
                with torch.no_grad():
                    z = data.features.float()
                    if not self.facts.config.model.fusion.l2_normalize:
                        z = F.normalize(z, dim=1)
                    centre = z.mean(dim=0)
                    record.spread = 1.0 - float(centre @ centre)
            self.steps_seen += 1
            self._remember(record)
            self._judge("after_update", record)

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        self._flush()
        self.write_report()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._flush()
        finished = trainer.state.epoch > trainer.config.train.num_epochs
        self.status = "finished" if finished else "interrupted"
        if trainer.should_stop:
            self.status = "stopped"
        self.write_report()

    # -- measurements ----------------------------------------------------------------------------

    def _gradients(self) -> GradientSummary:
        grads = [p.grad if p.grad is not None else torch.zeros(()) for _, p in self.named]
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

    @staticmethod
    def _batch_rows(trainer: Trainer, ranks: list[int], batch: Batch) -> np.ndarray:
        """The dataset rows of this step's batches on `ranks`: this rank's own, the others' found
        by replaying their samplers."""
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
        return np.concatenate(rows) if rows else batch.indices

    def _non_finite_inputs(self, batch: Batch) -> dict[str, list[str]]:
        found = {}
        for modality in ("video", "audio", "sensor", "text"):
            values = getattr(batch, modality)
            if values.is_floating_point():
                bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
                if bad.any():
                    rows = batch.indices[bad.cpu().numpy()]
                    found[modality] = [str(i) for i in self.sample_ids[rows]]
        return found

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
        for rule in self.rules:
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
        trainer = self.trainer
        if finding.severity >= Severity.WARNING and trainer.show_progress:
            line = Text(f"doctor  step {record.step}  ")
            line.append(str(finding.severity), style=SEVERITY_STYLE[finding.severity])
            line.append(f"  {finding.check}: {finding.title}")
            trainer.console.print(line)
        stop = self.stop_on is not None and finding.severity >= self.stop_on
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            trainer.stop_reason = (
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
        """Double k when the doctor's share of the step time passes the budget; halve it back
        (down to the default) when it is under a quarter of it."""
        measured_cost, self._measured_cost = self._measured_cost, 0.0
        if not self.step_time:
            return
        # k governs only what measuring adds; the cheap part is the same every step
        extra = max(0.0, measured_cost - self.cheap_time)
        share = extra / self.every / self.step_time
        if share > self.budget and self.every < MAX_EVERY:
            self.every *= 2
        elif share < self.budget / 4 and self.every > EXPENSIVE_EVERY:
            self.every //= 2

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
        trainer = self.trainer
        return Report(
            findings=rank_findings(findings, self.order),
            checks=checks,
            context={
                **describe_run(
                    trainer.config,
                    trainer.dataset.directory,
                    trainer.dataset.manifest,
                    trainer.device,
                ),
                **self.extra_context,
            },
            duration_s=self.doctor_time,
            training=self._training(trainer),
            measurements={"class_counts": manifest_class_counts(trainer.dataset.manifest)},
        )

    def write_report(self) -> Path:
        """Write `report.json` to the run directory, atomically."""
        path = self.run_dir / "report.json"
        json_report.render(self.report(), path)
        return path

    def _verified_finding(self, finding: Finding) -> Finding:
        """A patch is verified by re-running its pre-flight check on the patched config."""
        preflight = {check.name for check in ALL_CHECKS}
        if self.verify is None or not finding.config_patch or finding.check not in preflight:
            return finding
        key = f"{finding.check}:{sorted(finding.config_patch.items())}"
        if key not in self._verified:
            with isolated_rng(self.trainer.config.train.seed):
                self._verified[key] = self.verify(finding, self.trainer.config)
        return dataclasses.replace(finding, verification=self._verified[key])

    def _training(self, trainer: Trainer) -> dict[str, Any]:
        config = trainer.config.train
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "stop_reason": trainer.stop_reason or None,
            "epoch": trainer.state.epoch - 1,
            "num_epochs": config.num_epochs,
            "global_step": trainer.state.global_step,
            "batch_size": config.batch_size,
            "collapse_value": supcon_collapse_value(config.batch_size),
            "metrics": JsonLines(self.run_dir / "metrics.jsonl").read(),
            "steps": {name: list(values) for name, values in self.series.items()},
            "events": list(self.events),
            "doctor": {
                "time_s": round(self.doctor_time, 4),
                "overhead_fraction": self.overhead_fraction,
                "step_time_ms": 1000 * self.step_time,
                "expensive_every": self.every,
                "budget": self.budget,
            },
        }

    # -- status line -----------------------------------------------------------------------------

    def progress_status(self, trainer: Trainer) -> Text | None:
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
