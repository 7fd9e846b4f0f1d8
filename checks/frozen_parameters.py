"""frozen-parameters: what the model will really train, against the config and the optimizer."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from quad_doctor.checks.base import Check
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.config import MODALITIES, Config

# How many names of parameters missing from the optimizer to show; the count says the rest.
SHOWN_NAMES = 5
# A model whose every parameter is frozen cannot move its loss at any learning rate, so the
# downstream probes' flat curves are its symptoms, not causes of their own.
ALL_FROZEN_EXPLAINS = ("lr-range-test", "gradient-flow", "loss-bounds")
# Frozen encoders have no gradient, which gradient-flow would otherwise report as dead layers.
FROZEN_ENCODERS_EXPLAIN = ("gradient-flow",)


def freeze_flags(config: Config) -> dict[str, tuple[str, bool]]:
    """Each freezable module's path → (its config key, whether the config freezes it)."""
    flags: dict[str, tuple[str, bool]] = {}
    for modality in MODALITIES:
        encoder = getattr(config.model, modality)
        flags[f"encoders.{modality}.backbone"] = (
            f"model.{modality}.freeze_backbone",
            encoder.freeze_backbone,
        )
        flags[f"encoders.{modality}.head"] = (f"model.{modality}.freeze_head", encoder.freeze_head)
    flags["fusion"] = ("model.fusion.freeze", config.model.fusion.freeze)
    return flags


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter values (not tensors) of one module."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def module_state(counts: dict[str, int]) -> str:
    """`frozen`, `trainable` or `mixed`: what requires_grad says of a module as a whole."""
    if counts["trainable"] == 0:
        return "frozen"
    return "trainable" if counts["frozen"] == 0 else "mixed"


class FrozenParameters(Check):
    """Trainable and frozen parameters per module, against the freeze flags and the optimizer.

    What it checks:
        Counts trainable (`requires_grad`) and frozen parameters of every encoder's backbone and
        head and of the fusion in the model training would start from; compares each module with
        its config flag (`model.<modality>.freeze_backbone`, `model.<modality>.freeze_head`,
        `model.fusion.freeze`); and looks for trainable parameters the optimizer does not hold.

    Why it matters:
        A frozen parameter never changes. With everything frozen the loss is flat at every
        learning rate, which looks like a learning-rate problem and is not one. This trainer loads
        no pretrained weights, so a frozen backbone is a random feature extractor: with all four
        frozen only the linear heads and the fusion learn, over random features. A parameter
        that requires grad but is missing from the optimizer gets gradients and never moves — the
        usual result of unfreezing a module after the optimizer was built. A module whose frozen
        state disagrees with its flag means the model code does not do what the config says.

    Example:
        `--set model.video.freeze_backbone=true --set model.audio.freeze_backbone=true
        --set model.sensor.freeze_backbone=true --set model.text.freeze_backbone=true`:
        "all 4 encoder backbones are frozen: only heads and fusion learn (555,520 of 747,376)".

    Fix:
        Set the freeze flags that are on to `false` (the finding's config patch lists exactly
        those). A mismatch with the config, or parameters missing from the optimizer, is a code
        fault: apply `requires_grad` as the flags say, then build the optimizer over the
        parameters that require it.
    """

    name = "frozen-parameters"
    phase = "model"
    order = 50

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        flags = freeze_flags(ctx.config) if ctx.config is not None else {}
        evidence = self._measure(ctx, flags)
        if ctx.config is not None:
            yield from self._verdicts(evidence, flags)
        else:
            yield from self._user_verdicts(ctx, evidence)

    @staticmethod
    def _measure(ctx: DiagnosisContext, flags: dict[str, tuple[str, bool]]) -> dict[str, Any]:
        """Parameter counts per group and overall, flag mismatches, and optimizer coverage."""
        model = ctx.model
        groups: dict[str, dict[str, int]] = {}
        for name, p in model.named_parameters():
            counts = groups.setdefault(ctx.parameter_group(name), {"trainable": 0, "frozen": 0})
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        modules = {
            path: groups.get(path, parameter_counts(model.get_submodule(path))) for path in flags
        }
        modules = modules or groups
        totals = parameter_counts(model)
        optimizer = ctx.optimizer
        in_optimizer = {
            id(p)
            for group in (optimizer.param_groups if optimizer else [])
            for p in group["params"]
        }
        # by name: the optimizer holds the user's own parameters, the model may be a device copy
        held = {
            name
            for source in (model, ctx.setup.model)
            for name, p in source.named_parameters()
            if id(p) in in_optimizer
        }
        missing = [
            (name, p.numel())
            for name, p in model.named_parameters()
            if p.requires_grad and name not in held
        ]
        total = totals["trainable"] + totals["frozen"]
        return {
            "modules": {
                path: {
                    **counts,
                    "state": module_state(counts),
                    **({"config_frozen": flags[path][1]} if path in flags else {}),
                }
                for path, counts in modules.items()
            },
            "trainable_parameters": totals["trainable"],
            "frozen_parameters": totals["frozen"],
            "trainable_fraction": round(totals["trainable"] / total, 4) if total else 0.0,
            "frozen_modules": [
                path for path, counts in modules.items() if module_state(counts) != "trainable"
            ],
            "config_mismatches": [
                {
                    "module": path,
                    "config_key": key,
                    "config_frozen": frozen,
                    "actual": module_state(modules[path]),
                }
                for path, (key, frozen) in flags.items()
                if module_state(modules[path]) != ("frozen" if frozen else "trainable")
            ],
            "optimizer": type(optimizer).__name__ if optimizer else None,
            "missing_from_optimizer_tensors": len(missing),
            "missing_from_optimizer_values": sum(n for _, n in missing),
            "missing_from_optimizer_names": [name for name, _ in missing[:SHOWN_NAMES]],
        }

    def _user_verdicts(self, ctx: DiagnosisContext, evidence: dict[str, Any]) -> Iterator[Finding]:
        """Findings for a user's model: code changes, verified on a copy of the setup."""
        trainable = evidence["trainable_parameters"]
        total = trainable + evidence["frozen_parameters"]
        frozen = evidence["frozen_modules"]
        frozen_values = sum(evidence["modules"][g]["frozen"] for g in frozen)

        def unfreeze(groups: list[str]):
            def apply(setup):
                model = copy.deepcopy(setup.model)
                for name, p in model.named_parameters():
                    if ctx.parameter_group(name) in groups:
                        p.requires_grad_(True)
                optimizer = ctx.optimizer_factory() if ctx.optimizer else _default_optimizer(ctx)
                return setup.replace(model=model, optimizer=optimizer)

            return apply

        code = "\n".join(f"model.{g}.requires_grad_(True)" for g in frozen)
        code += "\n# then build the optimizer over every parameter that requires grad"
        if trainable == 0:
            yield Finding(
                self.name,
                Severity.CRITICAL,
                f"every parameter is frozen ({total:,}): the loss cannot move at any learning rate",
                evidence,
                "Unfreeze the model (requires_grad_(True) on what should learn), then build the "
                "optimizer over the parameters that require grad.",
                explains=ALL_FROZEN_EXPLAINS,
                code_change=code,
                setup_patch=unfreeze(frozen),
            )
        elif frozen:
            # Freezing a pretrained part is a common, deliberate choice; freezing most of a model
            # is worth a look.
            most = frozen_values > total / 2
            yield Finding(
                self.name,
                Severity.WARNING if most else Severity.INFO,
                f"{len(frozen)} of {len(evidence['modules'])} parameter groups are frozen "
                f"({frozen_values:,} of {total:,} values): " + ", ".join(frozen),
                evidence,
                "If these are not pretrained parts frozen on purpose, unfreeze them: a frozen "
                "random layer is a fixed random feature extractor.",
                explains=FROZEN_ENCODERS_EXPLAIN if most else (),
                code_change=code,
                setup_patch=unfreeze(frozen),
            )
        missing = evidence["missing_from_optimizer_tensors"]
        if missing and ctx.optimizer is not None:
            kind = evidence["optimizer"]

            def cover_all(setup):
                return setup.replace(optimizer=ctx.optimizer_factory())

            yield Finding(
                self.name,
                Severity.ERROR,
                f"{missing} trainable parameter tensor(s) "
                f"({evidence['missing_from_optimizer_values']:,} values) are missing from the "
                "optimizer: they get gradients and never change",
                evidence,
                "Build the optimizer after setting requires_grad, over every parameter that "
                "requires it; rebuild it whenever modules are unfrozen.",
                code_change=f"optimizer = torch.optim.{kind}("
                "[p for p in model.parameters() if p.requires_grad], ...)",
                setup_patch=cover_all,
            )

    def _verdicts(
        self, evidence: dict[str, Any], flags: dict[str, tuple[str, bool]]
    ) -> Iterator[Finding]:
        modules = evidence["modules"]
        trainable = evidence["trainable_parameters"]
        total = trainable + evidence["frozen_parameters"]
        frozen_modules = evidence["frozen_modules"]
        backbones = [f"encoders.{m}.backbone" for m in MODALITIES]
        frozen_backbones = [p for p in backbones if modules[p]["state"] == "frozen"]

        def finding(severity, title, remedy, patch=None, explains=()) -> Finding:
            return Finding(self.name, severity, title, evidence, remedy, patch or {}, explains)

        def unfreeze(paths: list[str]) -> dict[str, Any]:
            # only flags that are on: a frozen module whose flag is off is the mismatch finding's
            return {flags[p][0]: False for p in paths if flags[p][1]}

        if trainable == 0:
            patch = unfreeze(list(flags))
            yield finding(
                Severity.CRITICAL,
                f"every parameter is frozen ({total:,}): the loss cannot move at any learning rate",
                self._unfreeze_remedy(patch, "Unfreeze the model"),
                patch,
                ALL_FROZEN_EXPLAINS,
            )
        elif len(frozen_backbones) == len(backbones):
            patch = unfreeze(frozen_backbones)
            yield finding(
                Severity.ERROR,
                f"all {len(backbones)} encoder backbones are frozen: only heads and fusion learn "
                f"({trainable:,} of {total:,})",
                self._unfreeze_remedy(
                    patch,
                    "Unfreeze the backbones: this trainer loads no pretrained weights, so "
                    "frozen ones are random feature extractors",
                ),
                patch,
                FROZEN_ENCODERS_EXPLAIN,
            )
        elif frozen_modules:
            patch = unfreeze(frozen_modules)
            # A frozen backbone here is random, never pretrained, so it costs that modality its
            # features (warning); a frozen head or fusion sits on trainable features (info).
            severity = Severity.WARNING if frozen_backbones else Severity.INFO
            yield finding(
                severity,
                f"{len(frozen_modules)} of {len(modules)} modules are frozen: "
                + ", ".join(frozen_modules),
                self._unfreeze_remedy(
                    patch, "If this is not a deliberate choice, unfreeze these modules"
                ),
                patch,
            )
        mismatches = evidence["config_mismatches"]
        if mismatches:
            first = mismatches[0]
            yield finding(
                Severity.ERROR,
                f"{len(mismatches)} module(s) disagree with their freeze flag: {first['module']} "
                f"is {first['actual']} but {first['config_key']} = "
                f"{str(first['config_frozen']).lower()}",
                "The model code does not apply these flags, so no config change helps: make it "
                "set requires_grad = not <flag> on each module (ModalityEncoder, Fusion).",
            )
        missing = evidence["missing_from_optimizer_tensors"]
        if missing:
            yield finding(
                Severity.ERROR,
                f"{missing} trainable parameter tensor(s) "
                f"({evidence['missing_from_optimizer_values']:,} values) are missing from the "
                "optimizer: they get gradients and never change",
                "Build the optimizer after setting requires_grad, over every parameter that "
                "requires it (as build_optimizer does); rebuild it whenever modules are unfrozen.",
            )

    @staticmethod
    def _unfreeze_remedy(patch: dict[str, Any], advice: str) -> str:
        if patch:
            return f"{advice}: set " + ", ".join(f"{key} = false" for key in patch) + "."
        return (
            f"{advice}. No freeze flag is on, so the model code freezes them itself: see the "
            "mismatch finding."
        )


def _default_optimizer(ctx: DiagnosisContext):
    """With nothing trainable there is no optimizer to copy: the setup's own factory, or AdamW."""
    given = ctx.setup.optimizer
    if callable(given) and not isinstance(given, torch.optim.Optimizer):
        return given
    return lambda params: torch.optim.AdamW([p for p in params if p.requires_grad])
