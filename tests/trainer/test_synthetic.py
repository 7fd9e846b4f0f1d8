from __future__ import annotations

import json

import numpy as np
import pytest

from quad_doctor.trainer.config import SyntheticConfig
from quad_doctor.trainer.dataset import QuadDataset
from quad_doctor.trainer.errors import UsageError
from quad_doctor.trainer.synthetic import CLASS_NAMES, class_counts, generate_arrays, write_dataset

SMALL = {"num_samples": 120}


def generate(**knobs):
    return generate_arrays(SyntheticConfig(**{**SMALL, **knobs}))


def test_deterministic_for_a_seed_and_different_across_seeds():
    manifest_a, arrays_a = generate(seed=3)
    manifest_b, arrays_b = generate(seed=3)
    _, arrays_c = generate(seed=4)
    assert manifest_a.equals(manifest_b)
    for modality in arrays_a:
        assert np.array_equal(arrays_a[modality], arrays_b[modality])
        assert not np.array_equal(arrays_a[modality], arrays_c[modality])


def test_grouped_by_class_with_a_stratified_split():
    manifest, _ = generate()
    assert (np.diff(manifest["label"].to_numpy()) >= 0).all()
    val_share = manifest.groupby("label")["split"].apply(lambda s: (s == "val").mean())
    assert val_share.between(0.15, 0.25).all()


def test_class_weights_make_imbalance():
    manifest, _ = generate(class_weights=[10, 1, 1, 1, 1, 0])
    counts = np.bincount(manifest["label"], minlength=6)
    assert counts[0] > 5 * counts[1] and counts[5] == 0 and counts.sum() == 120
    assert class_counts(7, [1, 1, 1, 1, 1, 1]).sum() == 7


def test_label_noise_changes_that_share_of_labels():
    clean, _ = generate()
    noisy, _ = generate(label_noise=0.5)
    changed = (clean["label"] != noisy["label"]).mean()
    assert 0.3 < changed < 0.55  # half are redrawn, a sixth of those land on the same class


def test_nan_fraction_puts_nan_or_inf_in_that_share_of_sensor_rows():
    _, arrays = generate(nan_fraction=0.1)
    bad_rows = (~np.isfinite(arrays["sensor"])).any(axis=(1, 2))
    assert bad_rows.sum() == 12
    for modality in ("video", "audio", "text"):
        assert np.isfinite(arrays[modality]).all()


@pytest.mark.parametrize("modality", ["video", "audio", "sensor", "text"])
def test_dead_modality_is_constant(modality):
    _, arrays = generate(dead_modality=modality)
    assert np.unique(arrays[modality]).size == 1
    others = [m for m in arrays if m != modality]
    assert all(np.unique(arrays[m]).size > 1 for m in others)


def test_every_modality_carries_class_signal():
    # A class-conditional statistic differs between classes in each stream.
    manifest, arrays = generate(num_samples=600)
    labels = manifest["label"].to_numpy()
    text_keywords = (arrays["text"] >= 900).sum(axis=1)
    assert text_keywords.mean() > 1
    sensor_spectrum = np.abs(np.fft.rfft(np.diff(arrays["sensor"][:, 0], axis=1), axis=1))
    peak = sensor_spectrum[:, 2:14].argmax(axis=1) + 2
    assert np.median(peak[labels == 0]) < np.median(peak[labels == 5])


def test_write_dataset_is_readable_and_refuses_a_non_empty_directory(tmp_path):
    target = tmp_path / "data"
    write_dataset(SyntheticConfig(**SMALL), target)
    dataset = QuadDataset(target)
    assert len(dataset) == 120
    assert json.loads((target / "classes.json").read_text()) == CLASS_NAMES
    with pytest.raises(UsageError, match="not empty"):
        write_dataset(SyntheticConfig(**SMALL), target)
    write_dataset(SyntheticConfig(num_samples=60), target, force=True)
    assert len(QuadDataset(target)) == 60


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", explode)
    with pytest.raises(OSError):
        write_dataset(SyntheticConfig(**SMALL), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []
