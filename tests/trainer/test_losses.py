"""SupCon's analytic values: collapse ln(B-1), the single-class and separated floors, PML parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quad_doctor.trainer.losses import (
    SupConLoss,
    positives_per_anchor,
    supcon_collapse_value,
    supcon_floor,
)

BATCH = 32
DIM = 16
TEMPERATURE = 0.07


def unit_rows(batch: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, dim, generator=generator), dim=1)


def collapsed(batch: int, dim: int) -> torch.Tensor:
    """Every row the same unit vector, as a collapsed encoder produces."""
    return F.normalize(torch.ones(batch, dim), dim=1)


def test_collapse_value_is_ln_b_minus_1() -> None:
    # 3.4340: the flat loss of the original single-class-batch bug, at batch 32
    assert supcon_collapse_value(32) == pytest.approx(3.4340, abs=1e-4)
    assert supcon_collapse_value(2) == 0.0
    with pytest.raises(ValueError):
        supcon_collapse_value(1)


def test_positives_per_anchor_and_floor() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert positives_per_anchor(labels).tolist() == [2, 2, 2, 1, 1, 0]
    assert positives_per_anchor(torch.tensor(labels)).tolist() == [2, 2, 2, 1, 1, 0]
    # anchors without a positive are left out of the mean
    assert supcon_floor(labels) == pytest.approx((3 * math.log(2) + 2 * math.log(1)) / 5)
    assert supcon_floor(np.zeros(BATCH, dtype=int)) == pytest.approx(supcon_collapse_value(BATCH))
    assert math.isnan(supcon_floor(np.arange(5)))


@pytest.mark.parametrize(
    "labels",
    [
        torch.zeros(BATCH, dtype=torch.long),  # single class: the original bug
        torch.arange(BATCH) % 6,  # balanced
        torch.tensor([0] * 20 + [1] * 10 + [2, 3]),  # imbalanced, two anchors without positives
        torch.tensor([0, 0] + list(range(1, BATCH - 1))),  # one positive pair only
    ],
    ids=["single-class", "balanced", "imbalanced", "one-pair"],
)
def test_collapsed_embeddings_give_ln_b_minus_1_for_any_labels(labels: torch.Tensor) -> None:
    out = SupConLoss(TEMPERATURE)(collapsed(BATCH, DIM), labels)
    assert out.loss.item() == pytest.approx(math.log(BATCH - 1), abs=1e-5)


def test_all_distinct_labels_have_no_anchor_and_give_zero_with_grad() -> None:
    features = unit_rows(BATCH, DIM, seed=0).requires_grad_()
    out = SupConLoss(TEMPERATURE)(features, torch.arange(BATCH))
    assert (out.num_anchors, out.anchors_without_positive) == (0, BATCH)
    assert out.loss.item() == 0.0
    out.loss.backward()  # still part of the graph, so a training step does not crash
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_anchors_without_positive_are_excluded_and_counted() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    features = unit_rows(len(labels), DIM, seed=1)
    out = SupConLoss(TEMPERATURE)(features, labels)
    assert (out.num_anchors, out.anchors_without_positive) == (5, 2)
    # the singletons still sit in the others' denominators, so dropping them changes the loss
    kept = labels < 2
    without_singletons = SupConLoss(TEMPERATURE)(features[kept], labels[kept])
    assert without_singletons.num_anchors == 5
    assert out.loss.item() != pytest.approx(without_singletons.loss.item(), abs=1e-4)


def test_single_class_batch_never_goes_below_ln_b_minus_1() -> None:
    labels = torch.zeros(BATCH, dtype=torch.long)
    floor = supcon_collapse_value(BATCH)
    loss_fn = SupConLoss(TEMPERATURE)
    for seed in range(5):
        assert loss_fn(unit_rows(BATCH, DIM, seed), labels).loss.item() >= floor - 1e-5

    # Optimise the embeddings themselves: the best any model could do still sits on ln(B-1).
    torch.manual_seed(0)
    raw = torch.randn(BATCH, DIM, requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    losses = []
    for _ in range(300):
        loss = loss_fn(F.normalize(raw, dim=1), labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses) >= floor - 1e-5
    assert losses[-1] == pytest.approx(floor, abs=2e-3)
    assert losses[0] > losses[-1] + 0.1  # it did optimise, toward the floor and no further


def test_well_separated_classes_approach_mean_ln_p() -> None:
    labels = torch.tensor([0] * 10 + [1] * 8 + [2] * 6 + [3] * 5 + [4] * 2 + [5])
    directions = torch.eye(DIM)[:6]  # class k at its own orthonormal direction
    features = directions[labels]
    temperature = 0.05
    out = SupConLoss(temperature)(features, labels)
    # exactly: loss_i = ln(P_i + N_i exp(-1/tau)), N_i the anchor's negatives
    positives = positives_per_anchor(labels)
    negatives = len(labels) - 1 - positives
    has_positive = positives >= 1
    exact = np.log(positives + negatives * math.exp(-1 / temperature))[has_positive].mean()
    assert out.loss.item() == pytest.approx(exact, abs=1e-5)
    assert out.loss.item() == pytest.approx(supcon_floor(labels), abs=1e-5)
    assert out.loss.item() >= supcon_floor(labels) - 1e-6  # float32 rounding only
    assert (out.num_anchors, out.anchors_without_positive) == (31, 1)


def test_gradient_flows_to_every_row() -> None:
    labels = torch.arange(BATCH) % 6
    features = unit_rows(BATCH, DIM, seed=2).requires_grad_()
    SupConLoss(TEMPERATURE)(features, labels).loss.backward()
    assert torch.isfinite(features.grad).all()
    assert (features.grad.norm(dim=1) > 0).all()


def test_stable_at_tiny_temperature() -> None:
    labels = torch.arange(BATCH) % 6
    features = unit_rows(BATCH, DIM, seed=3).requires_grad_()
    out = SupConLoss(temperature=1e-4)(features, labels)  # logits up to 1e4: exp() would overflow
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_features_are_computed_in_float32(dtype: torch.dtype) -> None:
    labels = torch.arange(BATCH) % 6
    features = unit_rows(BATCH, DIM, seed=4).to(dtype)
    loss_fn = SupConLoss(TEMPERATURE)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = loss_fn(features, labels)
    assert out.loss.dtype == torch.float32
    reference = loss_fn(features.float(), labels).loss
    assert out.loss.item() == pytest.approx(reference.item(), abs=1e-5)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected features"):
        SupConLoss()(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_singletons", [False, True])
def test_matches_pytorch_metric_learning(seed: int, with_singletons: bool) -> None:
    """Parity with pytorch-metric-learning's SupConLoss where the two conventions agree.

    PML (losses/supcon_loss.py) computes the same L_out: cosine similarity / tau, the denominator
    over all a != i (its pos + neg masks exclude the diagonal), the mean log-probability over
    positives, and its default AvgNonZeroReducer averages the per-anchor losses that are > 0.
    They agree when
    - the features are unit rows: PML's CosineSimilarity normalises, ours uses them as given;
    - the batch has at least one negative pair: PML returns 0 without one (e.g. for a
      single-class batch), where ours gives the real loss, ln(B-1) when collapsed;
    - no anchor with a positive has a loss of exactly 0 (only reachable by underflow): PML's
      reducer would drop it, ours keeps it.
    Anchors without positives agree: PML gives them loss 0 and its reducer drops them, as ours
    excludes them.
    """
    from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

    generator = torch.Generator().manual_seed(seed)
    labels = torch.randperm(BATCH, generator=generator) % 8  # four of each of 8 classes
    if with_singletons:
        labels[:3] = torch.tensor([100, 101, 102])
    features = unit_rows(BATCH, DIM, seed=10 + seed)

    ours = SupConLoss(TEMPERATURE)(features, labels)
    theirs = PMLSupConLoss(temperature=TEMPERATURE)(features, labels)
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert ours.anchors_without_positive == (3 if with_singletons else 0)
