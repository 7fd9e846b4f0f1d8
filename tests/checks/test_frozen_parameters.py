from __future__ import annotations

import torch

from quad_doctor.checks.frozen_parameters import FrozenParameters
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.build import build_model
from quad_doctor.trainer.config import MODALITIES, load_config, patched_config

FREEZE_BACKBONES = [f"model.{m}.freeze_backbone=true" for m in MODALITIES]
FREEZE_HEADS = [f"model.{m}.freeze_head=true" for m in MODALITIES]


def findings(overrides, patch=None):
    config = load_config(overrides=overrides)
    if patch is not None:
        config = patched_config(config, patch)
    return list(FrozenParameters().run(DiagnosisContext(config)))


def serious(found):
    return [f for f in found if f.severity >= Severity.WARNING]


def test_the_default_model_trains_everything_and_is_quiet(small_overrides):
    assert findings(small_overrides) == []


def test_everything_frozen_is_critical_and_explains_the_flat_curves(small_overrides):
    overrides = small_overrides + FREEZE_BACKBONES + FREEZE_HEADS + ["model.fusion.freeze=true"]
    (found,) = findings(overrides)
    assert found.severity is Severity.CRITICAL
    assert found.title == (
        "every parameter is frozen (747,376): the loss cannot move at any learning rate"
    )
    assert found.evidence["trainable_parameters"] == 0
    assert found.evidence["optimizer"] is None
    assert set(found.explains) == {"lr-range-test", "gradient-flow", "loss-bounds"}
    assert len(found.config_patch) == 9
    assert set(found.config_patch.values()) == {False}
    assert findings(overrides, found.config_patch) == []


def test_all_backbones_frozen_is_an_error(small_overrides):
    overrides = small_overrides + FREEZE_BACKBONES
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert found.title == (
        "all 4 encoder backbones are frozen: only heads and fusion learn (555,520 of 747,376)"
    )
    assert found.evidence["modules"]["encoders.text.backbone"]["trainable"] == 0
    assert found.evidence["modules"]["encoders.text.head"]["frozen"] == 0
    assert found.config_patch == {f"model.{m}.freeze_backbone": False for m in MODALITIES}
    assert findings(overrides, found.config_patch) == []


def test_one_frozen_backbone_is_a_warning_that_names_it(small_overrides):
    overrides = small_overrides + ["model.video.freeze_backbone=true"]
    (found,) = findings(overrides)
    assert found.severity is Severity.WARNING
    assert found.title == "1 of 9 modules are frozen: encoders.video.backbone"
    assert found.config_patch == {"model.video.freeze_backbone": False}
    assert findings(overrides, found.config_patch) == []


def test_frozen_heads_and_fusion_over_trainable_backbones_are_only_info(small_overrides):
    (found,) = findings(small_overrides + FREEZE_HEADS + ["model.fusion.freeze=true"])
    assert found.severity is Severity.INFO
    assert found.evidence["frozen_modules"][-1] == "fusion"


def test_a_module_that_ignores_its_flag_is_an_error_no_config_fixes(small_overrides):
    config = load_config(overrides=small_overrides + ["model.fusion.freeze=true"])
    ctx = DiagnosisContext(config)
    model = build_model(config, ctx.train_dataset.quad)
    model.fusion.requires_grad_(True)  # the code ignoring the flag
    ctx.__dict__["model"] = model
    (found,) = [f for f in FrozenParameters().run(ctx) if "freeze flag" in f.title]
    assert found.severity is Severity.ERROR
    assert found.title == (
        "1 module(s) disagree with their freeze flag: fusion is trainable but "
        "model.fusion.freeze = true"
    )
    assert found.config_patch == {}


def test_trainable_parameters_missing_from_a_stale_optimizer_are_an_error(small_overrides):
    ctx = DiagnosisContext(load_config(overrides=small_overrides))
    ctx.__dict__["optimizer"] = torch.optim.AdamW(ctx.model.fusion.parameters())
    (found,) = FrozenParameters().run(ctx)
    encoders = [p for p in ctx.model.encoders.parameters() if p.requires_grad]
    assert found.severity is Severity.ERROR
    assert "missing from the optimizer" in found.title
    assert found.evidence["missing_from_optimizer_tensors"] == len(encoders)
    assert found.evidence["missing_from_optimizer_values"] == sum(p.numel() for p in encoders)
    assert found.evidence["missing_from_optimizer_names"][0].startswith("encoders.video.")
    assert found.config_patch == {}


def test_the_check_leaves_the_model_as_it_found_it(small_overrides):
    ctx = DiagnosisContext(load_config(overrides=small_overrides + FREEZE_BACKBONES))
    before = [(p.requires_grad, p.detach().clone()) for p in ctx.model.parameters()]
    training = ctx.model.training
    list(FrozenParameters().run(ctx))
    after = list(ctx.model.parameters())
    assert ctx.model.training == training
    assert all(
        p.requires_grad == grad and torch.equal(p, value)
        for (grad, value), p in zip(before, after, strict=True)
    )


def test_sgd_and_a_larger_fusion_are_quiet(small_overrides):
    assert (
        serious(findings(small_overrides + ["train.optimizer=sgd", "model.fusion.dim=1024"])) == []
    )


def test_a_model_copied_to_the_probe_device_still_matches_the_users_optimizer():
    """On CUDA the context probes a copy of the user's CPU model; their optimizer holds the
    originals, which must still count as covered (by name), and probes rebuild it on the copy."""
    import copy

    from torch.utils.data import DataLoader, TensorDataset

    from quad_doctor.trainer.setup import TrainingSetup

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    setup = TrainingSetup(
        model=model,
        loss_fn=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        train_loader=DataLoader(
            TensorDataset(torch.randn(60, 8), torch.arange(60) % 3), batch_size=12
        ),
    )
    ctx = DiagnosisContext(setup)
    ctx.__dict__["model"] = copy.deepcopy(model)  # what a different probe device gets
    assert list(FrozenParameters().run(ctx)) == []
    twin = ctx.model_copy()
    rebuilt = ctx.optimizer_for(twin)
    assert type(rebuilt) is torch.optim.SGD and rebuilt.defaults["momentum"] == 0.9
    assert [p for g in rebuilt.param_groups for p in g["params"]] == list(twin.parameters())
