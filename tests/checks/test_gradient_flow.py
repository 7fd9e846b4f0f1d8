from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from quad_doctor.checks.base import SkipCheck
from quad_doctor.checks.gradient_flow import (
    DEAD_MODALITY_SHARE,
    OVERFIT_MAX_STEPS,
    OVERFIT_MIN_PROGRESS,
    PROBE_STEPS,
    GradientFlow,
)
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import MODALITIES, SyntheticConfig, load_config
from quad_doctor.trainer.losses import SupConLoss
from quad_doctor.trainer.model import QuadModel
from quad_doctor.trainer.synthetic import write_dataset

SMALL_SAMPLES = 240


def run_check(overrides: list[str]) -> list:
    return list(GradientFlow().run(DiagnosisContext(load_config(overrides=overrides))))


def on_dataset(directory, *extra: str) -> list[str]:
    """`--set` arguments that point at `directory` with the small-dataset training settings."""
    return [f'data.path="{directory}"', "train.batch_size=16", "train.warmup_epochs=1", *extra]


@pytest.fixture(scope="module")
def faulty_dataset(tmp_path_factory):
    """Writes (once per module) a 240-sample synthetic dataset with one fault switched on."""
    written = {}

    def make(**fault):
        key = tuple(sorted(fault.items()))
        if key not in written:
            directory = tmp_path_factory.mktemp("faulty") / "data"
            written[key] = write_dataset(
                SyntheticConfig(num_samples=SMALL_SAMPLES, **fault), directory
            )
        return written[key]

    return make


@pytest.mark.parametrize(
    "extra", [[], ["train.seed=1"], ["train.batch_size=32", "train.seed=2"]], ids=str
)
def test_healthy_model_is_quiet(small_overrides, extra):
    assert run_check([*small_overrides, *extra]) == []


def test_the_training_steps_it_took_are_published(small_overrides):
    healthy = DiagnosisContext(load_config(overrides=small_overrides))
    stuck = DiagnosisContext(load_config(overrides=[*small_overrides, "model.fusion.dim=2"]))
    for ctx in (healthy, stuck):
        list(GradientFlow().run(ctx))
    assert healthy.published["gradient_flow_steps"]["probe"] == PROBE_STEPS
    assert 1 <= healthy.published["gradient_flow_steps"]["overfit"] < OVERFIT_MAX_STEPS
    assert stuck.published["gradient_flow_steps"]["overfit"] == OVERFIT_MAX_STEPS


def test_single_class_batches_are_left_to_the_sampler_check(small_overrides):
    found = run_check([*small_overrides, "train.sampler=sequential"])
    assert all(f.severity < Severity.ERROR for f in found)


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_dead_modality_gets_no_share_of_the_loss(faulty_dataset, modality):
    found = run_check(on_dataset(faulty_dataset(dead_modality=modality)))
    (dead,) = found
    assert dead.severity is Severity.WARNING
    assert modality in dead.title
    assert dead.evidence["low_share_modality"] == modality
    shares = dead.evidence["modality_share"]
    assert shares[modality] < DEAD_MODALITY_SHARE
    assert all(shares[m] > DEAD_MODALITY_SHARE for m in MODALITIES if m != modality)


def test_nan_samples_are_critical_and_name_the_stream(faulty_dataset):
    (found,) = run_check(on_dataset(faulty_dataset(nan_fraction=0.05)))
    assert found.severity is Severity.CRITICAL
    assert "NaN/Inf" in found.title
    assert found.evidence["non_finite_inputs"] == ["sensor"]
    assert found.evidence["loss"] is None
    json.dumps(found.to_dict(), allow_nan=False)  # the evidence stays strict JSON


def test_degenerate_fusion_cannot_fit_one_batch(small_overrides):
    # LayerNorm over two features leaves two possible embeddings: nothing can be learnt
    found = run_check([*small_overrides, "model.fusion.dim=2"])
    by_severity = {f.severity: f for f in found}
    overfit = by_severity[Severity.ERROR]
    assert "cannot fit one batch" in overfit.title
    assert overfit.evidence["overfit_steps"] == OVERFIT_MAX_STEPS
    assert overfit.evidence["overfit_progress"] < OVERFIT_MIN_PROGRESS
    vanishing = by_severity[Severity.WARNING]
    assert "encoders.audio.head" in vanishing.evidence["vanishing_modules"]


def test_encoders_run_without_grad_get_no_gradient(small_overrides, monkeypatch):
    # a user who runs the encoders under torch.no_grad() "to save memory" but still trains them
    encode = QuadModel.encode

    def encode_without_grad(self, *inputs, **named):
        with torch.no_grad():
            return encode(self, *inputs, **named)

    monkeypatch.setattr(QuadModel, "encode", encode_without_grad)
    (found,) = run_check(small_overrides)
    assert found.severity is Severity.ERROR
    assert "get no gradient" in found.title
    modules = found.evidence["without_gradient_modules"]
    assert "encoders.video.backbone" in modules and "fusion" not in modules


def test_detached_features_disconnect_the_loss(small_overrides, monkeypatch):
    forward = QuadModel.forward
    monkeypatch.setattr(QuadModel, "forward", lambda self, *x, **k: forward(self, *x, **k).detach())
    (found,) = run_check(small_overrides)
    assert found.severity is Severity.ERROR
    assert "does not depend on any trainable parameter" in found.title


def test_learning_rate_that_replaces_the_weights_is_exploding(small_overrides):
    (found,) = run_check([*small_overrides, "train.learning_rate=0.05"])
    assert found.severity is Severity.ERROR
    assert found.evidence["update_ratio_by_module"]["fusion"] > 1.0


def test_unnormalised_features_explode_and_the_patch_normalises_them(small_overrides):
    (found,) = run_check([*small_overrides, "model.fusion.l2_normalize=false"])
    assert found.severity is Severity.ERROR
    assert max(found.evidence["global_grad_norms"]) > 100
    assert found.config_patch == {"model.fusion.l2_normalize": True}


def test_nothing_trainable_is_skipped(small_overrides):
    frozen = [
        f"model.{m}.{part}=true" for m in MODALITIES for part in ("freeze_backbone", "freeze_head")
    ]
    ctx = DiagnosisContext(
        load_config(overrides=[*small_overrides, *frozen, "model.fusion.freeze=true"])
    )
    with pytest.raises(SkipCheck, match="no trainable parameters"):
        list(GradientFlow().run(ctx))


def test_model_optimizer_and_rng_are_untouched(small_overrides):
    ctx = DiagnosisContext(load_config(overrides=small_overrides))
    torch.manual_seed(1234)
    weights = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    optimizer_state = copy.deepcopy(ctx.optimizer.state_dict())
    rng = torch.get_rng_state()
    list(GradientFlow().run(ctx))
    after = ctx.model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all(p.grad is None for p in ctx.model.parameters())
    assert ctx.optimizer.state_dict() == optimizer_state
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_overfit_target_is_supcon_on_simplex_embeddings_measured_by_probing(small_overrides):
    ctx = DiagnosisContext(load_config(overrides=[*small_overrides, "train.temperature=0.5"]))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    classes = 4
    vertices = F.normalize(torch.eye(classes) - 1.0 / classes, dim=1)  # cosine -1/(K-1)
    loss = SupConLoss(temperature=0.5)(vertices[labels], labels).loss
    bounds = ctx.loss_bounds(labels.numpy())
    assert bounds.floor_at_norm == pytest.approx(float(loss), rel=1e-4)
    assert bounds.collapse == pytest.approx(math.log(len(labels) - 1), rel=1e-6)
