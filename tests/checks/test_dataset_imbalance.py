from __future__ import annotations

from quad_doctor.checks.dataset_imbalance import DatasetImbalance
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import SyntheticConfig, load_config
from quad_doctor.trainer.synthetic import write_dataset


def findings(*overrides):
    config = load_config(overrides=["data.synthetic.num_samples=600", *overrides])
    return list(DatasetImbalance().run(DiagnosisContext(config)))


def test_a_dominant_class_is_an_error_that_explains_the_sampler():
    (found,) = findings("data.synthetic.class_weights=[100, 1, 1, 1, 1, 1]")
    assert found.severity is Severity.ERROR
    assert found.evidence["majority_class"] == "walking"
    assert found.evidence["majority_share"] > 0.9
    assert "sampler-class-mix" in found.explains
    # generated on purpose: the generator's own knob is the fix
    assert found.config_patch == {"data.synthetic.class_weights": []}


def test_an_imbalanced_dataset_on_disk_gets_no_config_patch(tmp_path):
    weights = [100.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    path = write_dataset(SyntheticConfig(num_samples=600, class_weights=weights), tmp_path / "d")
    config = load_config(overrides=[f'data.path="{path}"'])
    (found,) = DatasetImbalance().run(DiagnosisContext(config))
    assert found.severity is Severity.ERROR and found.config_patch == {}


def test_a_missing_class_is_reported():
    titles = [f.title for f in findings("data.synthetic.class_weights=[1, 1, 1, 1, 1, 0]")]
    assert any("no training samples" in title for title in titles)


def test_balanced_data_is_quiet():
    assert findings() == []


def test_a_users_own_sampler_named_like_ours_is_not_taken_for_it():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import quad_doctor as qd

    class StratifiedBatchSampler(torch.utils.data.Sampler):  # the team's, in class order
        def __init__(self, count, batch_size):
            self.count, self.batch_size = count, batch_size

        def __iter__(self):
            order = list(range(self.count))
            return iter([order[i : i + self.batch_size] for i in range(0, self.count, 16)])

        def __len__(self):
            return self.count // self.batch_size

    labels = torch.tensor([0] * 190 + [1] * 5 + [2] * 5)  # 95 % one class
    model = torch.nn.Linear(4, 3)

    def setup(sampler):
        return qd.TrainingSetup(
            model=model,
            loss_fn=torch.nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            train_loader=DataLoader(
                TensorDataset(torch.randn(200, 4), labels), batch_sampler=sampler
            ),
        )

    (theirs,) = DatasetImbalance().run(DiagnosisContext(setup(StratifiedBatchSampler(200, 16))))
    assert theirs.title.endswith("batches are nearly single-class")
    (ours,) = DatasetImbalance().run(
        DiagnosisContext(setup(qd.StratifiedBatchSampler(labels, batch_size=16)))
    )
    assert ours.title.endswith("the stratified sampler must repeat the other classes' few samples")
