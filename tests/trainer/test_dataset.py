"""The dataset reader: a valid directory opens and batches correctly; every structural fault is
one DatasetError line naming the file or column."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from quad_doctor.trainer.dataset import (
    MODALITIES,
    Batch,
    QuadDataset,
    read_manifest,
    stratified_split,
)
from quad_doctor.trainer.errors import DatasetError

NUM_CLASSES = 6
ROWS_PER_CLASS = 4
NUM_ROWS = NUM_CLASSES * ROWS_PER_CLASS
CLASS_NAMES = ["walk", "run", "sit", "stand", "jump", "fall"]
FORMATS = ("csv", "parquet")


def valid_table() -> pd.DataFrame:
    """Manifest rows grouped by class, like real datasets; the last row of each class is val."""
    labels = np.repeat(np.arange(NUM_CLASSES), ROWS_PER_CLASS)
    splits = np.where(np.arange(NUM_ROWS) % ROWS_PER_CLASS == ROWS_PER_CLASS - 1, "val", "train")
    return pd.DataFrame(
        {"sample_id": [f"s{row:03d}" for row in range(NUM_ROWS)], "label": labels, "split": splits}
    )


def valid_arrays(num_rows: int = NUM_ROWS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "video": rng.integers(0, 256, (num_rows, 2, 3, 4, 4), dtype=np.uint8),
        "audio": rng.standard_normal((num_rows, 1, 5, 3), dtype=np.float32),
        "sensor": rng.standard_normal((num_rows, 6, 7), dtype=np.float32),
        "text": rng.integers(0, 50, (num_rows, 5), dtype=np.int32),
    }


def write_manifest(directory: Path, table: pd.DataFrame, fmt: str) -> Path:
    """Replace the directory's manifest with ``table`` in format ``fmt``."""
    for stale in directory.glob("manifest.*"):
        stale.unlink()
    path = directory / f"manifest.{fmt}"
    if fmt == "csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)
    return path


def write_dataset(directory: Path, fmt: str) -> Path:
    """Write a valid tiny dataset: manifest, classes.json and one .npy per modality."""
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory, valid_table(), fmt)
    (directory / "classes.json").write_text(json.dumps(CLASS_NAMES))
    for modality, array in valid_arrays().items():
        np.save(directory / f"{modality}.npy", array)
    return directory


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def dataset_dir(tmp_path: Path, fmt: str) -> Path:
    return write_dataset(tmp_path / "data", fmt)


def test_valid_dataset_opens(dataset_dir: Path, fmt: str) -> None:
    dataset = QuadDataset(dataset_dir)

    assert len(dataset) == NUM_ROWS
    assert dataset.manifest.path == dataset_dir / f"manifest.{fmt}"
    assert dataset.class_names == CLASS_NAMES
    assert dataset.num_classes == NUM_CLASSES
    assert dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.labels, valid_table()["label"].to_numpy())
    assert list(dataset.sample_ids) == list(valid_table()["sample_id"])
    for modality in MODALITIES:
        assert isinstance(dataset.arrays[modality], np.memmap)
        np.testing.assert_array_equal(dataset.arrays[modality], valid_arrays()[modality])


def test_split_indices_follow_the_split_column(dataset_dir: Path) -> None:
    dataset = QuadDataset(dataset_dir)

    val = dataset.split_indices("val")
    train = dataset.split_indices("train")

    assert val.dtype == np.int64 and train.dtype == np.int64
    np.testing.assert_array_equal(val, np.arange(ROWS_PER_CLASS - 1, NUM_ROWS, ROWS_PER_CLASS))
    assert np.all(np.diff(train) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(NUM_ROWS))
    with pytest.raises(ValueError, match="split"):
        dataset.split_indices("test")


def test_batch_reads_rows_in_the_order_asked(dataset_dir: Path) -> None:
    dataset = QuadDataset(dataset_dir)
    arrays = valid_arrays()
    rows = [5, 0, 17]

    batch = dataset.batch(rows)

    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.video.dtype == torch.float32 and batch.video.shape == (3, 2, 3, 4, 4)
    assert torch.equal(batch.video, torch.from_numpy(arrays["video"][rows]).float() / 255)
    assert 0.0 <= batch.video.min() and batch.video.max() <= 1.0
    assert batch.audio.dtype == torch.float32
    assert torch.equal(batch.audio, torch.from_numpy(arrays["audio"][rows]))
    assert batch.sensor.dtype == torch.float32
    assert torch.equal(batch.sensor, torch.from_numpy(arrays["sensor"][rows]))
    assert batch.text.dtype == torch.int64
    assert torch.equal(batch.text, torch.from_numpy(arrays["text"][rows]).long())
    assert batch.labels.dtype == torch.int64
    assert batch.labels.tolist() == [1, 0, 4]
    np.testing.assert_array_equal(batch.indices, rows)
    assert batch.indices.dtype == np.int64


def test_batch_to_copies_every_tensor(dataset_dir: Path) -> None:
    batch = QuadDataset(dataset_dir).batch(np.array([3, 2]))

    moved = batch.to("cpu")

    assert len(moved) == 2
    assert torch.equal(moved.video, batch.video)
    assert torch.equal(moved.labels, batch.labels)
    np.testing.assert_array_equal(moved.indices, batch.indices)


class CountingArray:
    """Stands in for a memmap and records every read."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.keys: list[object] = []

    def __getitem__(self, key: object) -> np.ndarray:
        self.keys.append(key)
        return self.array[key]


def test_batch_reads_each_modality_once(dataset_dir: Path) -> None:
    dataset = QuadDataset(dataset_dir)
    counters = {modality: CountingArray(dataset.arrays[modality]) for modality in MODALITIES}
    dataset.arrays.update(counters)

    batch = dataset.batch([9, 1, 22, 4])

    assert len(batch) == 4
    for modality, counter in counters.items():
        assert len(counter.keys) == 1, modality
        assert len(np.asarray(counter.keys[0])) == 4, modality


def test_stratified_split_is_deterministic_and_proportional() -> None:
    counts = {0: 1, 1: 2, 2: 5, 3: 10, 4: 50}
    labels = np.repeat(list(counts), list(counts.values()))

    splits = stratified_split(labels)

    np.testing.assert_array_equal(splits, stratified_split(labels))
    assert set(np.unique(splits)) <= {"train", "val"}
    val_per_class = {label: int(np.sum(splits[labels == label] == "val")) for label in counts}
    assert val_per_class == {0: 0, 1: 1, 2: 1, 3: 2, 4: 10}
    assert not np.array_equal(splits, stratified_split(labels, seed=1))
    half = stratified_split(labels, val_fraction=0.5)
    assert int(np.sum(half[labels == 4] == "val")) == 25


def test_manifest_without_split_column_uses_stratified_split(tmp_path: Path, fmt: str) -> None:
    directory = write_dataset(tmp_path / "data", fmt)
    write_manifest(directory, valid_table().drop(columns="split"), fmt)
    (directory / "classes.json").unlink()

    manifest = read_manifest(directory)

    np.testing.assert_array_equal(manifest.splits, stratified_split(manifest.labels))
    assert manifest.class_names == [str(label) for label in range(NUM_CLASSES)]
    assert manifest.num_classes == NUM_CLASSES


def test_integral_float_labels_are_accepted(tmp_path: Path, fmt: str) -> None:
    directory = write_dataset(tmp_path / "data", fmt)
    table = valid_table()
    table["label"] = table["label"].astype(float)
    write_manifest(directory, table, fmt)

    manifest = read_manifest(directory)

    assert manifest.labels.dtype == np.int64
    np.testing.assert_array_equal(manifest.labels, valid_table()["label"].to_numpy())


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(DatasetError, match="does not exist") as raised:
        QuadDataset(missing)

    assert str(raised.value) == f"{missing}: dataset directory does not exist"


def test_file_instead_of_directory_is_named(dataset_dir: Path) -> None:
    file = dataset_dir / "classes.json"

    with pytest.raises(DatasetError) as raised:
        QuadDataset(file)

    assert str(raised.value) == f"{file}: not a directory"


# --- structural faults ------------------------------------------------------------------------
# Each fault breaks a valid dataset and returns what the message must name (a path or column)
# plus the words that say what is wrong.

Fault = Callable[[Path, str], list[str]]


def manifest_path(directory: Path, fmt: str) -> Path:
    return directory / f"manifest.{fmt}"


def no_manifest(directory: Path, fmt: str) -> list[str]:
    manifest_path(directory, fmt).unlink()
    return [str(directory), "no manifest"]


def both_manifests(directory: Path, fmt: str) -> list[str]:
    valid_table().to_csv(directory / "manifest.csv", index=False)
    valid_table().to_parquet(directory / "manifest.parquet", index=False)
    return [str(directory), "both manifest.csv and manifest.parquet; keep one"]


def manifest_unreadable(directory: Path, fmt: str) -> list[str]:
    path = manifest_path(directory, fmt)
    path.write_bytes(b"\x00\xff\xfe\x89garbage\xff\x00")
    return [str(path), "not a readable"]


def manifest_zero_bytes(directory: Path, fmt: str) -> list[str]:
    path = manifest_path(directory, fmt)
    path.write_bytes(b"")
    return [str(path)]


def missing_column(column: str) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        path = write_manifest(directory, valid_table().drop(columns=column), fmt)
        return [str(path), f"missing column '{column}'"]

    return fault


def manifest_no_rows(directory: Path, fmt: str) -> list[str]:
    path = write_manifest(directory, valid_table().iloc[:0], fmt)
    return [str(path), "no rows"]


def bad_label(value: object, shown: str) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        table = valid_table()
        # One dtype per column, as a real file would have: strings, or floats for 1.5 / NaN.
        labels = table["label"].astype(type(value) if isinstance(value, float) else str)
        labels.iloc[[3, 7]] = value
        table["label"] = labels
        path = write_manifest(directory, table, fmt)
        return [str(path), "'label'", "row 3", "'s003'", shown, "not an integer", "2 such rows"]

    return fault


def negative_label(directory: Path, fmt: str) -> list[str]:
    table = valid_table()
    table.loc[10, "label"] = -2
    path = write_manifest(directory, table, fmt)
    return [str(path), "'label'", "row 10", "-2", "negative"]


def label_without_class_name(directory: Path, fmt: str) -> list[str]:
    table = valid_table()
    table.loc[13, "label"] = NUM_CLASSES
    path = write_manifest(directory, table, fmt)
    return [str(path), "'label'", "row 13", str(NUM_CLASSES), "classes.json"]


def huge_label_without_classes_json(directory: Path, fmt: str) -> list[str]:
    (directory / "classes.json").unlink()
    table = valid_table()
    table.loc[0, "label"] = 10**12
    path = write_manifest(directory, table, fmt)
    return [str(path), "'label'", str(10**12)]


def bad_split(directory: Path, fmt: str) -> list[str]:
    table = valid_table()
    table.loc[6, "split"] = "test"
    path = write_manifest(directory, table, fmt)
    return [str(path), "'split'", "row 6", "'test'"]


def classes_json(text: str, problem: str) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        path = directory / "classes.json"
        path.write_text(text)
        return [str(path), problem]

    return fault


def array_missing(modality: str) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        path = directory / f"{modality}.npy"
        path.unlink()
        return [str(path), "missing"]

    return fault


def array_truncated(directory: Path, fmt: str) -> list[str]:
    path = directory / "video.npy"
    path.write_bytes(path.read_bytes()[:-100])
    return [str(path), "not a readable .npy"]


def array_header_cut(directory: Path, fmt: str) -> list[str]:
    path = directory / "sensor.npy"
    path.write_bytes(path.read_bytes()[:30])
    return [str(path), "not a readable .npy"]


def array_not_npy(directory: Path, fmt: str) -> list[str]:
    path = directory / "audio.npy"
    path.write_text("0.1,0.2,0.3\n")
    return [str(path), "not an .npy"]


def array_is_npz(directory: Path, fmt: str) -> list[str]:
    path = directory / "text.npy"
    with path.open("wb") as file:
        np.savez(file, text=valid_arrays()["text"])
    return [str(path), "not an .npy"]


def array_unreadable(directory: Path, fmt: str) -> list[str]:
    path = directory / "video.npy"
    path.unlink()
    path.mkdir()
    return [str(path), "unreadable"]


def array_rows(modality: str) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        path = directory / f"{modality}.npy"
        np.save(path, valid_arrays(NUM_ROWS - 1)[modality])
        return [str(path), f"{NUM_ROWS - 1} rows", f"manifest has {NUM_ROWS}"]

    return fault


def array_replaced(modality: str, array: np.ndarray) -> Fault:
    def fault(directory: Path, fmt: str) -> list[str]:
        path = directory / f"{modality}.npy"
        np.save(path, array)
        return [str(path), "expected", str(array.dtype), str(array.shape)]

    return fault


MANIFEST_FAULTS = [
    pytest.param(no_manifest, id="no-manifest"),
    pytest.param(both_manifests, id="both-manifests"),
    pytest.param(manifest_unreadable, id="manifest-unreadable"),
    pytest.param(manifest_zero_bytes, id="manifest-zero-bytes"),
    pytest.param(missing_column("sample_id"), id="missing-sample-id"),
    pytest.param(missing_column("label"), id="missing-label"),
    pytest.param(manifest_no_rows, id="manifest-no-rows"),
    pytest.param(bad_label("walk", "'walk'"), id="label-word"),
    pytest.param(bad_label(1.5, "1.5"), id="label-fraction"),
    pytest.param(bad_label(float("nan"), "row 3"), id="label-empty"),
    pytest.param(negative_label, id="label-negative"),
    pytest.param(label_without_class_name, id="label-beyond-classes"),
    pytest.param(huge_label_without_classes_json, id="label-huge-without-classes"),
    pytest.param(bad_split, id="split-value"),
]

# classes.json and the arrays do not depend on the manifest's format; these run on CSV only.
FILE_FAULTS = [
    pytest.param(classes_json("[walk, run]", "not valid JSON"), id="classes-not-json"),
    pytest.param(classes_json('{"0": "walk"}', "list"), id="classes-not-list"),
    pytest.param(classes_json('["walk", 1, "sit"]', "entry 1"), id="classes-not-strings"),
    pytest.param(classes_json('["a", "b", "a"]', "duplicate class name 'a'"), id="classes-dup"),
    *[pytest.param(array_missing(m), id=f"{m}-missing") for m in MODALITIES],
    pytest.param(array_truncated, id="video-truncated"),
    pytest.param(array_header_cut, id="sensor-header-cut"),
    pytest.param(array_not_npy, id="audio-not-npy"),
    pytest.param(array_is_npz, id="text-npz"),
    pytest.param(array_unreadable, id="video-is-a-directory"),
    *[pytest.param(array_rows(m), id=f"{m}-row-count") for m in MODALITIES],
    pytest.param(
        array_replaced("video", np.zeros((NUM_ROWS, 2, 3, 4, 4), np.float32)), id="video-dtype"
    ),
    pytest.param(array_replaced("video", np.zeros((NUM_ROWS, 3, 4, 4), np.uint8)), id="video-rank"),
    pytest.param(
        array_replaced("video", np.zeros((NUM_ROWS, 2, 4, 4, 3), np.uint8)), id="video-channels"
    ),
    pytest.param(array_replaced("audio", np.zeros((NUM_ROWS, 1, 5, 3))), id="audio-float64"),
    pytest.param(
        array_replaced("audio", np.zeros((NUM_ROWS, 2, 5, 3), np.float32)), id="audio-channels"
    ),
    pytest.param(
        array_replaced("sensor", np.zeros((NUM_ROWS, 5, 7), np.float32)), id="sensor-channels"
    ),
    pytest.param(
        array_replaced("sensor", np.zeros((NUM_ROWS, 6, 7), ">f4")), id="sensor-byte-order"
    ),
    pytest.param(array_replaced("text", np.zeros((NUM_ROWS, 5), np.float32)), id="text-float"),
    pytest.param(array_replaced("text", np.zeros((NUM_ROWS, 5, 1), np.int64)), id="text-rank"),
]


def assert_one_line_naming(error: DatasetError, fragments: list[str]) -> None:
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("fault", MANIFEST_FAULTS)
def test_manifest_fault_is_one_line_naming_file_or_column(
    dataset_dir: Path, fmt: str, fault: Fault
) -> None:
    expected = fault(dataset_dir, fmt)

    with pytest.raises(DatasetError) as raised:
        QuadDataset(dataset_dir)

    assert_one_line_naming(raised.value, expected)


@pytest.mark.parametrize("fault", FILE_FAULTS)
def test_file_fault_is_one_line_naming_the_file(tmp_path: Path, fault: Fault) -> None:
    directory = write_dataset(tmp_path / "data", "csv")
    expected = fault(directory, "csv")

    with pytest.raises(DatasetError) as raised:
        QuadDataset(directory)

    assert_one_line_naming(raised.value, expected)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(no_manifest, id="no-manifest"),
        pytest.param(bad_label("walk", "'walk'"), id="label-word"),
        pytest.param(classes_json("[walk", "not valid JSON"), id="classes-not-json"),
    ],
)
def test_read_manifest_reports_manifest_faults(dataset_dir: Path, fmt: str, fault: Fault) -> None:
    expected = fault(dataset_dir, fmt)

    with pytest.raises(DatasetError) as raised:
        read_manifest(dataset_dir)

    assert all(fragment in str(raised.value) for fragment in expected)


def test_read_manifest_never_opens_arrays(dataset_dir: Path) -> None:
    for modality in MODALITIES:
        (dataset_dir / f"{modality}.npy").write_bytes(b"not an array")

    manifest = read_manifest(dataset_dir)

    assert len(manifest.labels) == NUM_ROWS


def test_values_are_not_structural_faults(dataset_dir: Path, fmt: str) -> None:
    table = valid_table()
    table.loc[1, "sample_id"] = table.loc[0, "sample_id"]
    write_manifest(dataset_dir, table, fmt)
    audio = valid_arrays()["audio"]
    audio[2] = np.nan
    np.save(dataset_dir / "audio.npy", audio)

    dataset = QuadDataset(dataset_dir)

    assert torch.isnan(dataset.batch([2]).audio).all()
