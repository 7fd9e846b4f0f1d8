"""The HAR-4M dataset: one row per clip, four row-aligned modality arrays on disk.

Layout of a dataset directory::

    manifest.csv | manifest.parquet   sample_id, label, split
    classes.json                      ["walking", "running", ...]  (index = label)
    video.npy                         (N, T, 3, H, W) uint8
    audio.npy                         (N, 1, F, T) float32 log-mel
    sensor.npy                        (N, 6, T) float32 accelerometer + gyroscope ("imu")
    text.npy                          (N, L) int token ids, 0 = padding

The arrays are memory-mapped, so opening a split costs nothing and workers share the pages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset


def read_manifest(root: Path) -> pd.DataFrame:
    """The manifest as a DataFrame, from parquet when there is one, else CSV."""
    if (root / "manifest.parquet").exists():
        return pd.read_parquet(root / "manifest.parquet")
    return pd.read_csv(root / "manifest.csv")


class HARDataset(Dataset):
    """One split of a HAR-4M dataset directory.

    Items are dicts: ``video`` (T, 3, H, W) float in [0, 1], ``audio`` (1, F, T) float,
    ``imu`` (6, T) float, ``text`` (L,) long and ``label`` (int). ``labels`` holds the label of
    every item, in item order; ``classes`` the class names.
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        self.split = split
        manifest = read_manifest(self.root)
        if "split" in manifest.columns:
            manifest = manifest[manifest["split"] == split]
        elif split != "train":
            # No split column: the whole directory is training data.
            manifest = manifest.iloc[:0]
        self.rows = manifest.index.to_numpy()
        self.labels = [int(y) for y in manifest["label"]]

        classes_file = self.root / "classes.json"
        if classes_file.exists():
            self.classes = json.loads(classes_file.read_text())
        else:
            self.classes = [str(c) for c in range(max(self.labels, default=-1) + 1)]

        self.video = np.load(self.root / "video.npy", mmap_mode="r")
        self.audio = np.load(self.root / "audio.npy", mmap_mode="r")
        self.imu = np.load(self.root / "sensor.npy", mmap_mode="r")
        self.text = np.load(self.root / "text.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {
            "video": torch.from_numpy(np.array(self.video[row], dtype=np.float32)) / 255.0,
            "audio": torch.from_numpy(np.array(self.audio[row], dtype=np.float32)),
            "imu": torch.from_numpy(np.array(self.imu[row], dtype=np.float32)),
            "text": torch.from_numpy(np.array(self.text[row], dtype=np.int64)),
            "label": self.labels[i],
        }
