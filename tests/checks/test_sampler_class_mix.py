from __future__ import annotations

from quad_doctor.checks.sampler_class_mix import SamplerClassMix
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import load_config


def findings(*overrides):
    return list(SamplerClassMix().run(DiagnosisContext(load_config(overrides=list(overrides)))))


def test_sequential_sampler_is_critical_with_the_evidence():
    (found,) = findings("train.sampler=sequential")
    assert found.severity is Severity.CRITICAL
    assert "ln(31) = 3.4340" in found.title
    assert found.evidence["first_batches"][0] == "Batch 0 labels - unique: [0], counts: [32]"
    assert found.evidence["single_class_batch_fraction"] > 0.8
    assert found.config_patch == {"train.sampler": "stratified"}
    assert "lr-range-test" in found.explains


def test_stratified_batches_smaller_than_two_per_class_still_give_every_anchor_a_positive():
    # 6 classes at batch 8: P classes x 2 samples, where proportional mixing left anchors alone
    assert findings("train.batch_size=8") == []


def test_stratified_default_is_quiet():
    assert findings() == []


def test_small_random_batches_get_both_fixes_in_one_patch():
    (found,) = findings("train.sampler=random", "train.batch_size=4")
    assert found.severity is Severity.ERROR
    assert found.config_patch == {"train.sampler": "stratified"}


def cross_entropy_setup(labels, batch_sampler):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from quad_doctor.trainer.setup import TrainingSetup

    model = torch.nn.Linear(8, int(labels.max()) + 1)
    dataset = TensorDataset(torch.randn(len(labels), 8), labels)
    return TrainingSetup(
        model=model,
        loss_fn=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters()),
        train_loader=DataLoader(dataset, batch_sampler=batch_sampler),
    )


def test_a_per_sample_loss_needs_no_positives_but_not_one_class_per_batch():
    import torch
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    labels = torch.arange(960) % 60  # 60 classes: random batches of 16 rarely pair a class
    shuffled = BatchSampler(RandomSampler(range(960)), batch_size=16, drop_last=True)
    ctx = DiagnosisContext(cross_entropy_setup(labels, shuffled))
    assert not ctx.pair_based  # measured: cross-entropy can fall on a batch of distinct classes
    assert list(SamplerClassMix().run(ctx)) == []

    grouped = torch.sort(labels).values  # dataset stored by class, read in order
    in_order = BatchSampler(SequentialSampler(range(960)), batch_size=16, drop_last=True)
    (found,) = SamplerClassMix().run(DiagnosisContext(cross_entropy_setup(grouped, in_order)))
    assert found.severity is Severity.ERROR
    assert found.title.startswith("100% of batches hold a single class: every update pulls")
    assert "StratifiedBatchSampler" in found.code_change
