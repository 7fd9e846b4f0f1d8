"""Reader for the on-disk dataset format: a validated manifest plus memory-mapped modality arrays.

A dataset directory holds ``manifest.csv`` or ``manifest.parquet`` (columns ``sample_id``,
``label``, optional ``split``), an optional ``classes.json`` and one ``.npy`` file per modality,
row-aligned with the manifest. Everything structural is checked on open and reported as a
one-line ``DatasetError``; value-level problems (NaN pixels, duplicate ids) are left to the
doctor's checks, which can say more about them than a loader can.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .errors import DatasetError

MODALITIES: tuple[str, ...] = ("video", "audio", "sensor", "text")

SPLITS: tuple[str, ...] = ("train", "val")

# Every .npy file starts with these bytes (numpy.lib.format).
NPY_MAGIC = b"\x93NUMPY"

# Without classes.json the class names are "0".."max_label", one string per class; a stray huge
# label (a sample id pasted into the label column) would otherwise allocate billions of names.
# A million classes is beyond any dataset this trainer is meant for, yet costs only ~60 MB.
MAX_CLASSES_WITHOUT_NAMES = 1_000_000


def _one_line(exc: BaseException) -> str:
    """Collapse a library's error message (pandas' often ends in a newline) to one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True, eq=False)
class Manifest:
    """Labels-only view of a dataset: what label-only checks read, never the arrays."""

    path: Path
    sample_ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes: the length of ``class_names``."""
        return len(self.class_names)


def stratified_split(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Assign each row to "train" or "val", class by class, deterministically for a seed.

    Each class sends ``round(count * val_fraction)`` of its rows to "val", at least one when it
    has two or more rows (so every class can be evaluated) and never all of them (so every class
    is trained on). Which rows go is drawn with ``seed``. Returns one "train"/"val" per label.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.empty(0, dtype="<U5")
    # Shuffle, then stable-sort by label: each class becomes one contiguous block in random order,
    # found with a single sort and no Python loop over rows or classes; the first rows of each
    # block go to val.
    shuffled = np.random.default_rng(seed).permutation(labels.size)
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    sorted_labels = labels[order]
    block_starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    counts = np.diff(np.r_[block_starts, labels.size])
    # np.rint rounds half to even, exactly like the built-in round().
    val_counts = np.rint(counts * val_fraction).astype(np.int64)
    if val_fraction > 0:
        val_counts = np.where(counts >= 2, np.maximum(val_counts, 1), val_counts)
    val_counts = np.minimum(val_counts, np.maximum(counts - 1, 0))

    rank_in_class = np.arange(labels.size) - np.repeat(block_starts, counts)
    is_val = np.empty(labels.size, dtype=bool)
    is_val[order] = rank_in_class < np.repeat(val_counts, counts)
    return np.where(is_val, "val", "train")


def _find_manifest(directory: Path) -> Path:
    csv_path = directory / "manifest.csv"
    parquet_path = directory / "manifest.parquet"
    if csv_path.exists() and parquet_path.exists():
        raise DatasetError(f"{directory}: both manifest.csv and manifest.parquet; keep one")
    if csv_path.exists():
        return csv_path
    if parquet_path.exists():
        return parquet_path
    raise DatasetError(f"{directory}: no manifest.csv or manifest.parquet")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        # Object dtype for the text columns and no NA detection: the fastest path through the C
        # parser, and a sample id "NA" stays a string. Empty labels arrive as "" and are rejected
        # by the label check like any other non-integer.
        return pd.read_csv(
            path,
            dtype={"sample_id": object, "split": object},
            na_filter=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: file is empty") from None
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        raise DatasetError(f"{path}: not a readable {kind} file ({_one_line(exc)})") from exc


def _plain(value: object) -> object:
    """A numpy scalar as its Python value, so messages show 2 rather than np.int64(2)."""
    return value.item() if isinstance(value, np.generic) else value


def _first_bad_row(
    path: Path, table: pd.DataFrame, bad: np.ndarray, column: str, problem: str
) -> str:
    """Describe the first flagged row (0-based, with its sample id) and how many rows are bad."""
    row = int(np.argmax(bad))
    value, sample_id = (_plain(table[name].iloc[row]) for name in (column, "sample_id"))
    total = int(np.count_nonzero(bad))
    also = f"; {total} such rows in all" if total > 1 else ""
    return (
        f"{path}: column '{column}' row {row} (sample_id {sample_id!r}): {value!r} {problem}{also}"
    )


def _integer_labels(path: Path, table: pd.DataFrame) -> np.ndarray:
    column = table["label"]
    if pd.api.types.is_bool_dtype(column):
        bad = np.ones(len(column), dtype=bool)
    elif pd.api.types.is_integer_dtype(column) and not column.hasnans:
        return column.to_numpy(dtype=np.int64)
    else:
        # Strings, floats and nullable integers: integral finite values are labels ("3", 3.0),
        # anything else ("walk", 1.5, "", NaN) is not.
        numeric = pd.to_numeric(column, errors="coerce")
        values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.floor(values))
        if not bad.any():
            return values.astype(np.int64)
    raise DatasetError(_first_bad_row(path, table, bad, "label", "is not an integer label"))


def _read_class_names(directory: Path) -> list[str] | None:
    path = directory / "classes.json"
    if not path.exists():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({_one_line(exc)})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({_one_line(exc)})") from exc
    if not isinstance(names, list):
        raise DatasetError(
            f"{path}: expected a JSON list of class names, got {type(names).__name__}"
        )
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise DatasetError(f"{path}: entry {index} is {name!r}, not a string class name")
    first_index: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first_index:
            raise DatasetError(
                f"{path}: duplicate class name {name!r} at entries {first_index[name]} and {index}"
            )
        first_index[name] = index
    return names


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate a dataset directory's manifest and classes.json, never its arrays.

    Raises ``DatasetError`` (one line naming the file or column) for a missing directory or
    manifest, an unreadable manifest, missing columns, no rows, non-integer or out-of-range labels,
    split values other than train/val, and a malformed classes.json. Without a ``split`` column
    the split is ``stratified_split(labels)``.
    """
    directory = Path(directory)
    if not directory.exists():
        raise DatasetError(f"{directory}: dataset directory does not exist")
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory")
    path = _find_manifest(directory)
    table = _read_table(path)
    for column in ("sample_id", "label"):
        if column not in table.columns:
            raise DatasetError(f"{path}: missing column '{column}'")
    if len(table) == 0:
        raise DatasetError(f"{path}: manifest has no rows")

    labels = _integer_labels(path, table)
    negative = labels < 0
    if negative.any():
        raise DatasetError(_first_bad_row(path, table, negative, "label", "is negative"))
    class_names = _read_class_names(directory)
    if class_names is not None:
        unnamed = labels >= len(class_names)
        if unnamed.any():
            problem = f"has no name in classes.json ({len(class_names)} classes)"
            raise DatasetError(_first_bad_row(path, table, unnamed, "label", problem))
    else:
        max_label = int(labels.max())
        if max_label >= MAX_CLASSES_WITHOUT_NAMES:
            raise DatasetError(
                f"{path}: column 'label' has label {max_label}, too large to number classes "
                f"without a classes.json (limit {MAX_CLASSES_WITHOUT_NAMES - 1})"
            )
        class_names = [str(label) for label in range(max_label + 1)]

    if "split" in table.columns:
        split_column = table["split"]
        is_val = (split_column == "val").to_numpy(dtype=bool, na_value=False)
        unknown = ~(is_val | (split_column == "train").to_numpy(dtype=bool, na_value=False))
        if unknown.any():
            raise DatasetError(
                _first_bad_row(path, table, unknown, "split", "is not 'train' or 'val'")
            )
        splits = np.where(is_val, "val", "train")
    else:
        splits = stratified_split(labels)

    sample_id_column = table["sample_id"]
    if sample_id_column.dtype == object:
        sample_ids = sample_id_column.to_numpy(dtype=object)
    else:
        # Parquet may store ids as integers; callers treat ids as strings.
        sample_ids = sample_id_column.astype(str).to_numpy(dtype=object)
    return Manifest(
        path=path,
        sample_ids=sample_ids,
        labels=labels,
        splits=splits,
        class_names=class_names,
    )


@dataclass(frozen=True)
class _ArraySpec:
    """What one modality's array must look like, beyond its row count."""

    layout: str
    rank: int
    dtype_name: str
    dtype_ok: Callable[[np.dtype], bool]
    fixed_dims: dict[int, int]


_ARRAY_SPECS: dict[str, _ArraySpec] = {
    "video": _ArraySpec("(N,T,3,H,W)", 5, "uint8", lambda dt: dt == np.uint8, {2: 3}),
    "audio": _ArraySpec("(N,1,F,T)", 4, "float32", lambda dt: dt == np.float32, {1: 1}),
    "sensor": _ArraySpec("(N,6,T)", 3, "float32", lambda dt: dt == np.float32, {1: 6}),
    "text": _ArraySpec("(N,L)", 2, "integer", lambda dt: np.issubdtype(dt, np.integer), {}),
}


def _open_array(path: Path, modality: str, num_rows: int) -> np.ndarray:
    if not path.exists():
        raise DatasetError(f"{path}: missing {modality} array file")
    try:
        with path.open("rb") as file:
            magic = file.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({_one_line(exc)})") from exc
    # Checked by hand because np.load would fall back to pickle (or open an .npz) and then
    # complain about pickled data, which misleads about what is wrong with the file.
    if magic != NPY_MAGIC:
        raise DatasetError(f"{path}: not an .npy file (no NUMPY header)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        # A truncated file fails here too: the memmap is longer than the data on disk.
        raise DatasetError(f"{path}: not a readable .npy file ({_one_line(exc)})") from exc
    spec = _ARRAY_SPECS[modality]
    shape_ok = array.ndim == spec.rank and all(
        array.shape[dim] == size for dim, size in spec.fixed_dims.items()
    )
    if not shape_ok or not spec.dtype_ok(array.dtype):
        raise DatasetError(
            f"{path}: expected {spec.dtype_name} {modality} of shape {spec.layout}, "
            f"got {array.dtype} with shape {array.shape}"
        )
    if array.shape[0] != num_rows:
        raise DatasetError(
            f"{path}: {array.shape[0]} rows but the manifest has {num_rows}; "
            "arrays must be row-aligned with the manifest"
        )
    return array


@dataclass(eq=False)
class Batch:
    """One batch as tensors: video float32 (B,T,3,H,W) in [0,1], audio float32, sensor float32,
    text int64, labels int64, indices (np.int64 array of dataset rows)."""

    video: torch.Tensor
    audio: torch.Tensor
    sensor: torch.Tensor
    text: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray

    def to(self, device: torch.device | str) -> Batch:
        """Copy the tensors to ``device`` (non-blocking); the indices stay on the host."""
        return Batch(
            video=self.video.to(device, non_blocking=True),
            audio=self.audio.to(device, non_blocking=True),
            sensor=self.sensor.to(device, non_blocking=True),
            text=self.text.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            indices=self.indices,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's inputs by stream name (the quadmodal model's keyword arguments)."""
        return {"video": self.video, "audio": self.audio, "sensor": self.sensor, "text": self.text}

    def forward(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's output for this batch: the one place the trainer calls a model."""
        return model(**self.inputs())


class QuadDataset:
    """A dataset directory opened for training: validated manifest plus memory-mapped arrays."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        num_rows = len(self.manifest.labels)
        self.arrays: dict[str, np.ndarray] = {
            modality: _open_array(self.directory / f"{modality}.npy", modality, num_rows)
            for modality in MODALITIES
        }

    @property
    def labels(self) -> np.ndarray:
        """int64 label of every row."""
        return self.manifest.labels

    @property
    def sample_ids(self) -> np.ndarray:
        """Sample id of every row."""
        return self.manifest.sample_ids

    @property
    def class_names(self) -> list[str]:
        """Class names, index = label."""
        return self.manifest.class_names

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.manifest.num_classes

    def __len__(self) -> int:
        return len(self.manifest.labels)

    def split_indices(self, split: str) -> np.ndarray:
        """Rows of ``split`` ("train" or "val") as int64, ascending (file order)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.manifest.splits == split).astype(np.int64)

    def batch(self, indices: np.ndarray | Sequence[int]) -> Batch:
        """Read the rows ``indices`` (in that order) as one ``Batch``: one read per modality."""
        rows = np.asarray(indices, dtype=np.int64)
        arrays = {modality: self.arrays[modality][rows] for modality in MODALITIES}
        return Batch(
            video=torch.from_numpy(arrays["video"]).float().div_(255),
            audio=torch.from_numpy(arrays["audio"]),
            sensor=torch.from_numpy(arrays["sensor"]),
            # astype also fixes a non-native byte order, which torch cannot wrap.
            text=torch.from_numpy(arrays["text"].astype(np.int64, copy=False)),
            labels=torch.from_numpy(self.manifest.labels[rows]),
            indices=rows,
        )
