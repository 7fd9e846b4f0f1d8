"""Deterministic synthetic quadmodal dataset: six activities seen by video, audio, IMU and text.

Each modality carries the class in a form a linear read-out of the raw input cannot see (random
phase, random position, random base frequency) under distractors of as much variance or more, so
an untrained network's embeddings classify poorly and only training separates the classes. Each
modality confuses one pair of classes and goes silent on some samples, so every modality helps and
none alone is perfect. Samples are stored grouped by class, as real datasets usually are — which is
exactly what turns a sequential sampler into single-class batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from quad_doctor.trainer.config import MODALITIES, NUM_CLASSES, SyntheticConfig
from quad_doctor.trainer.dataset import stratified_split
from quad_doctor.trainer.errors import DatasetError, UsageError

CLASS_NAMES = ["walking", "running", "cycling", "sitting", "standing", "climbing_stairs"]

VIDEO_FRAMES, VIDEO_SIZE = 8, 24
AUDIO_BINS, AUDIO_STEPS = 32, 32
SENSOR_STEPS = 128
TEXT_LENGTH = 24
VOCAB_SIZE = 1000  # the default `model.text.vocab_size`

# Each modality shows one pair of classes identically, so no modality alone can be perfect.
CONFUSED_PAIRS = {"video": (3, 4), "audio": (0, 5), "sensor": (1, 2), "text": (2, 5)}
# Share of samples on which a modality carries no class signal at all (only distractors).
SILENT_FRACTION = 0.1

# Video: a fine drifting grating whose orientation is the class, under coarse moving blobs.
GRATING_ANGLES_DEG = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
GRATING_CYCLES_PER_PIXEL = 0.25
GRATING_AMPLITUDE = 0.35
BLOB_COUNT, BLOB_AMPLITUDE, BLOB_SIGMA = 3, 1.0, 5.0
# Audio: two tones whose spacing (in frequency bins) is the class, at a random base frequency,
# under an equally loud tone at a random frequency.
TONE_SPACING_BINS = [3, 5, 7, 9, 11, 13]
TONE_AMPLITUDE, DISTRACTOR_TONE_AMPLITUDE = 1.5, 1.5
# Sensor: the class is the oscillation frequency (cycles per window) at a random phase, under a
# random-walk drift of equal variance.
SENSOR_CYCLES = [5.0, 8.0, 11.0, 15.0, 19.0, 24.0]
SENSOR_AMPLITUDE, DRIFT_STD = 1.0, 1.0
# Text: a few class keywords among common tokens drawn from a Zipf-like distribution.
KEYWORDS_PER_CLASS, KEYWORDS_PER_SAMPLE = 8, 3
FIRST_KEYWORD_ID = VOCAB_SIZE - KEYWORDS_PER_CLASS * NUM_CLASSES - 10
NOISE_STD = 0.3


def class_counts(num_samples: int, class_weights: list[float]) -> np.ndarray:
    """Samples per class: balanced, or in proportion to the weights (largest remainder)."""
    weights = np.asarray(class_weights or [1.0] * NUM_CLASSES, dtype=np.float64)
    exact = weights / weights.sum() * num_samples
    counts = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - counts), kind="stable")[: num_samples - counts.sum()]:
        counts[c] += 1
    return counts


def generate_arrays(config: SyntheticConfig) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The manifest and the four modality arrays, generated deterministically from the config."""
    rng = np.random.default_rng(config.seed)
    counts = class_counts(config.num_samples, config.class_weights)
    labels = np.repeat(np.arange(NUM_CLASSES), counts)
    n = len(labels)
    arrays = {}
    for m, modality in enumerate(MODALITIES):
        shown = labels.copy()
        first, second = CONFUSED_PAIRS[modality]
        shown[shown == second] = first
        silent = rng.random(n) < SILENT_FRACTION
        modality_rng = np.random.default_rng([config.seed, m + 1])
        arrays[modality] = _GENERATORS[modality](shown, silent, modality_rng)

    if config.dead_modality:
        arrays[config.dead_modality][...] = _DEAD_VALUE[config.dead_modality]
    if config.nan_fraction > 0:
        bad = rng.choice(n, size=max(1, round(config.nan_fraction * n)), replace=False)
        positions = rng.integers(0, SENSOR_STEPS, size=len(bad))
        arrays["sensor"][bad, rng.integers(0, 6, size=len(bad)), positions] = np.where(
            rng.random(len(bad)) < 0.5, np.nan, np.inf
        )

    stored_labels = labels.copy()
    if config.label_noise > 0:
        noisy = rng.random(n) < config.label_noise
        stored_labels[noisy] = rng.integers(0, NUM_CLASSES, size=int(noisy.sum()))
    manifest = pd.DataFrame(
        {
            "sample_id": [f"s{i:06d}" for i in range(n)],
            "label": stored_labels,
            "split": stratified_split(labels, val_fraction=0.2, seed=config.seed),
        }
    )
    return manifest, arrays


def write_dataset(config: SyntheticConfig, directory: str | Path, force: bool = False) -> Path:
    """Write the dataset in the on-disk format; atomic: a failure leaves nothing half-written."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(f"{target}: directory is not empty (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        manifest, arrays = generate_arrays(config)
        manifest.to_csv(staging / "manifest.csv", index=False)
        (staging / "classes.json").write_text(json.dumps(CLASS_NAMES) + "\n", encoding="utf-8")
        for modality, array in arrays.items():
            np.save(staging / f"{modality}.npy", array)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def embedded_default(config: SyntheticConfig) -> Path:
    """The synthetic dataset for these knobs, generated once into the user cache and reused."""
    key = hashlib.sha256(json.dumps(vars(config), sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("QUAD_DOCTOR_CACHE", Path.home() / ".cache" / "quad-doctor"))
    target = cache / f"synthetic-{GENERATOR_VERSION}-{key}"
    if (target / "manifest.csv").is_file():
        return target
    try:
        write_dataset(config, target, force=True)
    except OSError as exc:
        if (target / "manifest.csv").is_file():  # another process won the race
            return target
        raise DatasetError(f"{cache}: cannot write the embedded dataset: {exc}") from None
    return target


def _video(shown: np.ndarray, silent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(shown)
    t = np.arange(VIDEO_FRAMES, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:VIDEO_SIZE, 0:VIDEO_SIZE].astype(np.float32)
    out = np.empty((n, VIDEO_FRAMES, 3, VIDEO_SIZE, VIDEO_SIZE), dtype=np.uint8)
    for i in range(n):
        theta = np.deg2rad(GRATING_ANGLES_DEG[shown[i]])
        speed = rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0])
        phase = rng.uniform(0, 2 * np.pi)
        along = xx * np.cos(theta) + yy * np.sin(theta)
        grating = np.sin(2 * np.pi * GRATING_CYCLES_PER_PIXEL * along - speed * t + phase)
        frames = np.zeros((VIDEO_FRAMES, 3, VIDEO_SIZE, VIDEO_SIZE), dtype=np.float32)
        if not silent[i]:
            frames += (
                GRATING_AMPLITUDE * grating[:, None] * rng.uniform(0.5, 1.0, size=(1, 3, 1, 1))
            )
        for _ in range(BLOB_COUNT):
            cy, cx = rng.uniform(0, VIDEO_SIZE, size=2)
            vy, vx = rng.uniform(-1.0, 1.0, size=2)
            dist2 = (yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2
            blob = np.exp(-dist2 / (2 * BLOB_SIGMA**2))
            colour = rng.uniform(-BLOB_AMPLITUDE, BLOB_AMPLITUDE, size=(1, 3, 1, 1))
            frames += blob[:, None] * colour
        frames += rng.normal(0, NOISE_STD / 3, size=frames.shape)
        out[i] = np.clip(128 + 64 * frames, 0, 255).astype(np.uint8)
    return out


def _audio(shown: np.ndarray, silent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(shown)
    bins = np.arange(AUDIO_BINS, dtype=np.float32)[None, :, None]
    steps = np.arange(AUDIO_STEPS, dtype=np.float32)[None, None, :]

    def tones(centre: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        band = np.exp(-((bins - centre[:, None, None]) ** 2) / 1.0)
        on = (steps >= start[:, None, None]) & (steps < (start + length)[:, None, None])
        return band * on

    spacing = np.asarray(TONE_SPACING_BINS, dtype=np.float32)[shown]
    base = rng.uniform(1, AUDIO_BINS - 2 - spacing)
    start = rng.integers(0, AUDIO_STEPS // 2, size=n).astype(np.float32)
    length = rng.integers(AUDIO_STEPS // 3, AUDIO_STEPS, size=n).astype(np.float32)
    signal = TONE_AMPLITUDE * (tones(base, start, length) + tones(base + spacing, start, length))
    signal *= ~silent[:, None, None]
    d_start = rng.integers(0, AUDIO_STEPS // 2, size=n).astype(np.float32)
    d_length = rng.integers(AUDIO_STEPS // 4, AUDIO_STEPS, size=n).astype(np.float32)
    distractor = tones(rng.uniform(0, AUDIO_BINS - 1, size=n), d_start, d_length)
    distractor *= DISTRACTOR_TONE_AMPLITUDE * rng.uniform(0.5, 1.5, size=(n, 1, 1))
    noise = np.abs(rng.normal(0, NOISE_STD, size=(n, AUDIO_BINS, AUDIO_STEPS)))
    return (signal + distractor + noise).astype(np.float32)[:, None]


def _sensor(shown: np.ndarray, silent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(shown)
    t = np.arange(SENSOR_STEPS, dtype=np.float32)[None, None, :] / SENSOR_STEPS
    cycles = np.asarray(SENSOR_CYCLES, dtype=np.float32)[shown][:, None, None]
    # Accelerometer (0-2) at the class frequency, gyroscope (3-5) at its second harmonic, weaker.
    harmonic = np.array([1, 1, 1, 2, 2, 2], dtype=np.float32)[None, :, None]
    weight = np.array([1, 1, 1, 0.5, 0.5, 0.5], dtype=np.float32)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 6, 1))
    amplitude = SENSOR_AMPLITUDE * rng.uniform(0.6, 1.4, size=(n, 1, 1))
    signal = amplitude * weight * np.sin(2 * np.pi * cycles * harmonic * t + phase)
    signal *= ~silent[:, None, None]
    drift = np.cumsum(rng.normal(0, 1, size=(n, 6, SENSOR_STEPS)), axis=2)
    drift *= DRIFT_STD / (drift.std(axis=2, keepdims=True) + 1e-6)
    noise = rng.normal(0, NOISE_STD, size=(n, 6, SENSOR_STEPS))
    return (signal + drift + noise).astype(np.float32)


def _text(shown: np.ndarray, silent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(shown)
    common = np.arange(1, FIRST_KEYWORD_ID)
    zipf = 1.0 / np.arange(1, len(common) + 1) ** 0.8
    tokens = rng.choice(common, size=(n, TEXT_LENGTH), p=zipf / zipf.sum())
    lengths = rng.integers(TEXT_LENGTH // 2, TEXT_LENGTH + 1, size=n)
    for i in range(n):
        if not silent[i]:
            slots = rng.choice(lengths[i], size=KEYWORDS_PER_SAMPLE, replace=False)
            first = FIRST_KEYWORD_ID + KEYWORDS_PER_CLASS * shown[i]
            tokens[i, slots] = rng.integers(first, first + KEYWORDS_PER_CLASS, size=len(slots))
        tokens[i, lengths[i] :] = 0
    return tokens.astype(np.int64)


_GENERATORS = {"video": _video, "audio": _audio, "sensor": _sensor, "text": _text}
# What a dead stream holds: mid-grey video, silent audio, a still sensor, one repeated token.
_DEAD_VALUE = {"video": 128, "audio": 0.0, "sensor": 0.0, "text": 1}
# Bump when the generated data changes, so cached embedded datasets are regenerated.
GENERATOR_VERSION = 3
