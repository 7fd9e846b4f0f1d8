"""data-integrity: what the arrays hold — NaN/Inf, dead streams, duplicates, leakage, empty rows."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext, indices_of, streams_of
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.synthetic import SILENT_FRACTION

# Rows read from a memory-mapped array at a time, at most ...
CHUNK_ROWS = 256
# ... and at most this many bytes, so a chunk and its float copies stay in a core's L2 cache
# (1 MiB here): the embedded video's scan took 32 ms in 75-row chunks (1 MB), 85 ms in 256-row
# ones (3.5 MB). A sample larger than this (a 16-frame 224² clip is 2.4 MB) is one chunk.
CHUNK_BYTES = 2**20
# Class signal is measured on a fixed random subset of rows, so its cost does not grow with the
# dataset. At 1000 rows a stream shuffled against the labels measured a lift of at most 0.06
# (5 seeds x 40 shuffles), far below the 0.2 below which a stream is called silent.
SIGNAL_ROWS = 1000
SIGNAL_SEED = 0
# Cheap per-sample summaries that see through the random phase, position and frequency offsets
# that hide the class: power in equal-width spectral bands (sensor over time, audio over frequency
# and over time), edge energy by orientation and frame-to-frame change on a few frames (video), and
# a hashed token histogram (text; with 64 buckets its lift at 240 samples was about half of 256's).
SPECTRUM_BANDS = 16
SUMMARY_FRAMES = 4
TEXT_BUCKETS = 256
# Lift = (balanced accuracy - chance) / (1 - chance) of a leave-one-out nearest-class-mean
# classifier on the summaries: 0 at chance, 1 perfect. Measured on the synthetic data (seeds 0-4,
# 240 and 1500 samples): healthy video 0.61-0.77, audio 0.48-0.59, sensor 0.65-0.73, text
# 0.67-0.73 (0.34-0.59 even with label_noise=0.3); the same streams shuffled against the labels
# -0.003 on average, at most 0.12 (400 shuffles per stream). A dead stream
# (data.synthetic.dead_modality) is constant, caught before this measure.
NO_SIGNAL_LIFT = 0.2
# A class mean from a handful of rows is noise: with 95 % of 240 samples in one class the other
# classes keep 2-3 rows each and a healthy audio stream measured a lift below 0.2. Classes with
# fewer rows than this are left out of the measure (and with fewer than two left, it is skipped).
MIN_SIGNAL_CLASS_ROWS = 10
# deepchecks' DataDuplicates fails above 5 % duplicated rows; any duplicate is worth a warning.
DUPLICATE_ERROR_SHARE = 0.05
# deepchecks' TrainTestSamplesMix fails when over 10 % of test samples also appear in train; any
# leak at all inflates val_accuracy, so it is always worth a warning.
LEAKAGE_ERROR_SHARE = 0.10
# The embedded data leaves every stream silent on 10 % of samples and still trains well; beyond
# that share of empty rows a stream's encoder sees nothing on a large part of the data.
EMPTY_ROWS_ERROR_SHARE = SILENT_FRACTION
# How many sample ids a finding lists.
SHOWN_IDS = 5

# A user's dataset decodes every item: read at most this many training samples (and a quarter of
# it from validation), in batches, for at most this long. 2,000 clean samples bound the share of
# NaN rows missed below 0.15 % at 95 % confidence (rule of three); a dead stream shows at once.
SCAN_SAMPLES = 2000
SCAN_BATCH = 64
SCAN_SECONDS = 15.0

SYNTHETIC_HINT = "the data comes from the synthetic generator (data.path is empty)"


@dataclass(frozen=True)
class StreamScan:
    """What one chunked pass over a modality's array measured."""

    nonfinite: np.ndarray  # bool per row: holds a NaN or ±Inf
    empty: np.ndarray  # bool per row: all padding (text) or one value throughout (the others)
    varies: bool  # some row differs from the first one
    constant: float | None  # the one value every element holds, when the whole stream is one
    digests: np.ndarray  # uint64 per row: a hash of the row's bytes
    summaries: np.ndarray  # (signal rows, features): cheap per-sample summaries


def band_spectrum(signal: np.ndarray) -> np.ndarray:
    """Share of power in `SPECTRUM_BANDS` equal-width bands along the last axis, the power
    averaged over the middle axes; blind to shifts and phase, which hide the class."""
    centred = signal - signal.mean(axis=-1, keepdims=True)
    power = np.abs(np.fft.rfft(centred, axis=-1)) ** 2
    power = power.reshape(len(signal), -1, power.shape[-1]).mean(axis=1)[:, 1:]  # no DC
    bands = min(SPECTRUM_BANDS, power.shape[1])
    edges = np.arange(bands) * power.shape[1] // max(bands, 1)
    pooled = np.add.reduceat(power, edges, axis=1) if bands else power
    total = pooled.sum(axis=1, keepdims=True)
    return np.divide(pooled, total, out=np.zeros_like(pooled), where=total > 0)


def video_summaries(clips: np.ndarray) -> np.ndarray:
    """(n,T,3,H,W) uint8 → edge energy by orientation (horizontal, vertical, two diagonals) as
    shares of the total, and frame-to-frame change energy over it, on `SUMMARY_FRAMES` frames."""
    stride = -(-clips.shape[1] // SUMMARY_FRAMES)
    grey = clips[:, ::stride].sum(axis=2, dtype=np.float32)
    differences = (
        grey[..., :, 1:] - grey[..., :, :-1],
        grey[..., 1:, :] - grey[..., :-1, :],
        grey[..., 1:, 1:] - grey[..., :-1, :-1],
        grey[..., 1:, :-1] - grey[..., :-1, 1:],
        grey[:, 1:] - grey[:, :-1],
    )
    flat = [d.reshape(len(d), -1) for d in differences]
    energy = np.stack([np.einsum("ij,ij->i", f, f) / max(f.shape[1], 1) for f in flat], axis=1)
    spatial = energy[:, :4].sum(axis=1, keepdims=True)
    return np.divide(energy, spatial, out=np.zeros_like(energy), where=spatial > 0)


def audio_summaries(spectrograms: np.ndarray) -> np.ndarray:
    """(n,1,F,T) → band spectra of the frequency profile and of the loudness over time."""
    return np.column_stack(
        [band_spectrum(spectrograms.mean(axis=(1, 3))), band_spectrum(spectrograms.mean(axis=2))]
    )


def sensor_summaries(windows: np.ndarray) -> np.ndarray:
    """(n,C,T) → band spectrum over time, power averaged over the channels."""
    return band_spectrum(windows)


def text_summaries(tokens: np.ndarray) -> np.ndarray:
    """(n,L) token ids → share of the non-padding tokens in each of `TEXT_BUCKETS` id buckets."""
    n = len(tokens)
    buckets = np.where(tokens > 0, tokens % TEXT_BUCKETS, TEXT_BUCKETS)  # padding: extra bucket
    index = (np.arange(n)[:, None] * (TEXT_BUCKETS + 1) + buckets).ravel()
    counts = np.bincount(index, minlength=n * (TEXT_BUCKETS + 1)).reshape(n, -1)[:, :-1]
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


SUMMARIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "video": video_summaries,
    "audio": audio_summaries,
    "sensor": sensor_summaries,
    "text": text_summaries,
}


def row_digests(chunk: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes (identical rows, identical digests)."""
    # SHA-1 is the fastest hashlib digest here (24 ms for the embedded video, blake2b 42 ms).
    joined = b"".join(hashlib.sha1(row, usedforsecurity=False).digest()[:8] for row in chunk)
    return np.frombuffer(joined, dtype=np.uint64)


def scan_stream(modality: str, array: np.ndarray, signal_rows: np.ndarray) -> StreamScan:
    """One pass over `array` in chunks of at most `CHUNK_ROWS` rows and `CHUNK_BYTES` bytes."""
    n = len(array)
    step = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(array[0].nbytes, 1)))
    first = np.array(array[0]).ravel()
    floating = np.issubdtype(array.dtype, np.floating)
    nonfinite = np.zeros(n, dtype=bool)
    empty = np.zeros(n, dtype=bool)
    digests = np.empty(n, dtype=np.uint64)
    varies = False
    summaries = []
    for start in range(0, n, step):
        chunk = np.ascontiguousarray(array[start : start + step])
        rows = slice(start, start + len(chunk))
        flat = chunk.reshape(len(chunk), -1)
        if floating:
            nonfinite[rows] = ~np.isfinite(flat).all(axis=1)
        if modality == "text" or (not floating and array.ndim == 2):  # token ids, 0 = padding
            empty[rows] = ~flat.any(axis=1)
        else:
            empty[rows] = flat.min(axis=1) == flat.max(axis=1)
        varies = varies or bool((flat != first).any())
        digests[rows] = row_digests(chunk)
        lo, hi = np.searchsorted(signal_rows, [start, start + len(chunk)])
        if hi > lo and modality in SUMMARIES:
            with np.errstate(invalid="ignore", over="ignore"):  # NaN rows are dropped later
                summaries.append(SUMMARIES[modality](chunk[signal_rows[lo:hi] - start]))
    one_value = not varies and first.min() == first.max()
    constant = first[0].item() if one_value else None
    summaries = np.concatenate(summaries) if summaries else np.zeros((len(signal_rows), 0))
    return StreamScan(nonfinite, empty, varies, constant, digests, summaries)


def class_signal_lift(summaries: np.ndarray, labels: np.ndarray) -> float | None:
    """How far above chance a leave-one-out nearest-class-mean classifier on `summaries` predicts
    `labels`: (balanced accuracy - chance) / (1 - chance), 0 at chance, 1 perfect. None when there
    is nothing to measure (no features, or fewer than two classes with `MIN_SIGNAL_CLASS_ROWS`
    finite rows)."""
    finite = np.isfinite(summaries).all(axis=1)
    x, y = summaries[finite], labels[finite]
    _, y, counts = np.unique(y, return_inverse=True, return_counts=True)
    pairable = (counts >= MIN_SIGNAL_CLASS_ROWS)[y]
    x, y = x[pairable], y[pairable]
    _, y, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = len(counts)
    if k < 2 or x.shape[1] == 0:
        return None
    spread = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    one_hot = (y[:, None] == np.arange(k)).astype(x.dtype)
    sums = one_hot.T @ x
    means = sums / counts[:, None]
    distance = (x**2).sum(axis=1)[:, None] - 2 * x @ means.T + (means**2).sum(axis=1)[None, :]
    own_mean = (sums[y] - x) / (counts[y] - 1)[:, None]  # leave the sample out of its class
    distance[np.arange(len(y)), y] = ((x - own_mean) ** 2).sum(axis=1)
    hits = np.bincount(y, weights=distance.argmin(axis=1) == y, minlength=k)
    balanced_accuracy = float(np.mean(hits / counts))
    chance = 1.0 / k
    return (balanced_accuracy - chance) / (1.0 - chance)


def first_ids(sample_ids: np.ndarray, rows: np.ndarray) -> list[str]:
    """The sample ids of the first `SHOWN_IDS` flagged rows."""
    return [str(sample_ids[r]) for r in np.flatnonzero(rows)[:SHOWN_IDS]]


def repeats_earlier(group: np.ndarray) -> np.ndarray:
    """Rows whose group (id, content) already occurred in an earlier row."""
    first = np.zeros(len(group), dtype=bool)
    first[np.unique(group, return_index=True)[1]] = True
    return ~first


@dataclass(frozen=True)
class Samples:
    """What the check reads: each stream's rows (memory-mapped in full, or a sample read through
    the dataset), with their labels, ids and split."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    sample_ids: np.ndarray
    is_val: np.ndarray
    total: int  # samples in the dataset(s), read or not
    noun: str = "samples"  # "scanned samples" for a sample

    def coverage(self) -> dict[str, object]:
        """How much was read, and the NaN share a clean sample still leaves possible."""
        read = len(self.labels)
        if read >= self.total:
            return {"scanned": f"all {read:,} samples"}
        return {
            "scanned": f"{read:,} of {self.total:,} samples (a seeded random sample)",
            # rule of three: none seen in n draws bounds the share below 3/n at 95 % confidence
            "undetected_share_95": float(f"{3 / read:.2g}"),
        }


def read_samples(ctx: DiagnosisContext) -> Samples:
    """Every row of an array-backed dataset (memory-mapped `arrays`, as the embedded one has);
    else up to `SCAN_SAMPLES` training and `SCAN_SAMPLES // 4` validation items read through the
    user's dataset, collate function and `batch_fn`, within `SCAN_SECONDS`."""
    dataset = ctx.train_dataset
    arrays = getattr(dataset, "arrays", None)
    if isinstance(arrays, dict) and arrays:
        splits = np.asarray(getattr(dataset, "splits", np.full(len(ctx.labels), "train")))
        ids = np.asarray(getattr(dataset, "sample_ids", np.arange(len(ctx.labels)).astype(str)))
        return Samples(dict(arrays), ctx.labels, ids, splits == "val", len(ctx.labels))
    rng = np.random.default_rng(SIGNAL_SEED)
    train = ctx.train_indices
    parts = [("train", ctx.setup.train_loader, _pick(rng, train, SCAN_SAMPLES))]
    val_loader = ctx.setup.val_loader
    total = len(train)
    if val_loader is not None and getattr(val_loader, "dataset", None) is not None:
        val_rows = _val_rows(val_loader)
        parts.append(("val", val_loader, _pick(rng, val_rows, SCAN_SAMPLES // 4)))
        total += len(val_rows)
    streams: dict[str, list[np.ndarray]] = {}
    labels, ids, is_val = [], [], []
    started = time.perf_counter()
    planned = sum(len(rows) for _, _, rows in parts)
    done = 0
    for split, loader, rows in parts:
        for start in range(0, len(rows), SCAN_BATCH):
            if time.perf_counter() - started > SCAN_SECONDS:
                break
            chunk = rows[start : start + SCAN_BATCH]
            inputs, chunk_labels = ctx.batch_fn(ctx.read(chunk, loader=loader))
            for name, value in streams_of(inputs).items():
                streams.setdefault(name, []).append(value.detach().cpu().numpy())
            labels.append(np.asarray(torch.as_tensor(chunk_labels).cpu()).reshape(-1))
            ids += [f"{split}[{int(i)}]" for i in chunk]
            is_val += [split == "val"] * len(chunk)
            done += len(chunk)
            if ctx.on_progress:
                ctx.on_progress("data-integrity: reading samples", done, planned)
    read = len(ids)
    arrays = {
        name: np.concatenate(chunks)
        for name, chunks in streams.items()
        if sum(len(c) for c in chunks) == read
    }
    return Samples(
        arrays,
        np.concatenate(labels).astype(np.int64),
        np.array(ids),
        np.array(is_val, dtype=bool),
        total,
        "scanned samples" if read < total else "samples",
    )


def _pick(rng: np.random.Generator, rows: np.ndarray, budget: int) -> np.ndarray:
    """All `rows`, or a seeded random `budget` of them in order."""
    if len(rows) <= budget:
        return rows
    return np.sort(rng.choice(rows, size=budget, replace=False))


def _val_rows(loader) -> np.ndarray:
    """The dataset indices a validation loader reads."""
    rows = indices_of(loader)
    return rows if rows is not None else np.arange(len(loader.dataset), dtype=np.int64)


class DataIntegrity(Check):
    """What the arrays hold: NaN/Inf, dead streams, duplicates, train/val leakage, empty rows.

    What it checks:
        Reads every modality's memory-mapped array once, in chunks (never all of it at once) —
        or, for a user's dataset without such arrays, up to 2,000 training and 500 validation
        items through its own `__getitem__`, collate function and `batch_fn` (at most 15 s), and
        says what it covered and the NaN share it could have missed at 95 % confidence:
        samples holding NaN or Inf; streams that are the same in every sample (dead), or that
        vary but carry no class signal (a nearest-class-mean classifier on cheap summaries —
        spectral bands, edge and motion energy, token histograms — does no better than chance);
        duplicate sample ids and samples byte-identical in all four streams; validation samples
        whose id or content is also in the training split; and empty rows (text that is all
        padding, a video, audio or sensor row holding one value throughout). Labels with no name
        in classes.json are rejected by the dataset loader before any check runs.

    Why it matters:
        One NaN sample makes the loss NaN in every batch it lands in, and one step on that loss
        makes the weights NaN for good: the loss, the LR range test and the gradients then all
        look broken when only the data is. A dead stream gives its encoder nothing to learn from,
        so its gradients vanish; a stream out of step with the labels teaches noise. Duplicates
        count twice, samples in both splits inflate `val_accuracy`, and on an empty row the
        stream's encoder sees nothing.

    Example:
        `--set data.synthetic.nan_fraction=0.01`: "15 of 1500 samples hold NaN or Inf (sensor
        15)", CRITICAL. `--set data.synthetic.dead_modality=audio`: "the audio stream is dead:
        every sample is the same (all 0.0)", ERROR.

    Fix:
        Drop or repair the samples the evidence names and re-export the arrays; write every
        array in the manifest's row order; give every sample one id and one split. For the
        synthetic generator, `data.synthetic.nan_fraction = 0.0` and
        `data.synthetic.dead_modality = ""` turn off the faults it was asked to make.
    """

    name = "data-integrity"
    phase = "data"
    order = 10

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        samples = read_samples(ctx)
        if not samples.arrays:
            raise SkipCheck("the batches hold no tensor inputs to scan")
        self.samples = samples
        n = len(samples.labels)
        rng = np.random.default_rng(SIGNAL_SEED)
        signal_rows = np.sort(rng.choice(n, size=min(n, SIGNAL_ROWS), replace=False))
        scans = {m: scan_stream(m, a, signal_rows) for m, a in samples.arrays.items()}
        lifts = {
            m: class_signal_lift(scan.summaries, samples.labels[signal_rows])
            for m, scan in scans.items()
            if scan.varies
        }
        ctx.published["data_integrity_coverage"] = samples.coverage()
        synthetic = ctx.config is not None and ctx.config.data.path == ""
        yield from self._nonfinite(ctx, scans, synthetic)
        yield from self._dead_streams(ctx, scans, synthetic)
        yield from self._silent_streams(ctx, lifts, len(signal_rows), synthetic)
        yield from self._duplicates_and_leakage(ctx, scans)
        yield from self._empty_rows(ctx, scans)

    def _nonfinite(
        self, ctx: DiagnosisContext, scans: dict[str, StreamScan], synthetic: bool
    ) -> Iterator[Finding]:
        bad = np.logical_or.reduce([scan.nonfinite for scan in scans.values()])
        if not bad.any():
            return
        ids = self.samples.sample_ids
        by_modality = {
            m: {
                "samples": int(scan.nonfinite.sum()),
                "share": round(float(scan.nonfinite.mean()), 4),
                "first_sample_ids": first_ids(ids, scan.nonfinite),
            }
            for m, scan in scans.items()
            if scan.nonfinite.any()
        }
        where = ", ".join(f"{m} {counts['samples']}" for m, counts in by_modality.items())
        remedy = (
            "Drop or repair these samples (the evidence names the first ones) and re-export the "
            "arrays; a NaN input reaches the loss of every batch that holds it."
        )
        patch = {}
        if synthetic and ctx.config.data.synthetic.nan_fraction > 0:
            patch = {"data.synthetic.nan_fraction": 0.0}
            remedy += f" Here {SYNTHETIC_HINT}: set data.synthetic.nan_fraction = 0.0."
        yield Finding(
            check=self.name,
            severity=Severity.CRITICAL,
            title=f"{int(bad.sum())} of {len(bad)} {self.samples.noun} hold NaN or Inf ({where}): "
            "each poisons its batches, then the weights",
            evidence={
                **self.samples.coverage(),
                "samples": int(bad.sum()),
                "share": round(float(bad.mean()), 4),
                "first_sample_ids": first_ids(ids, bad),
                "by_modality": by_modality,
            },
            remedy=remedy,
            config_patch=patch,
            explains=("loss-bounds", "lr-range-test", "gradient-flow"),
        )

    def _dead_streams(
        self, ctx: DiagnosisContext, scans: dict[str, StreamScan], synthetic: bool
    ) -> Iterator[Finding]:
        dead_knob = ctx.config.data.synthetic.dead_modality if synthetic else ""
        for modality, scan in scans.items():
            if scan.varies:
                continue
            same = f"all {scan.constant}" if scan.constant is not None else "one repeated row"
            remedy = (
                f"Re-export {modality}.npy from the source recordings: a stream that is the same "
                "in every sample cannot tell samples apart, so its encoder learns nothing."
            )
            patch = {}
            if dead_knob == modality:
                patch = {"data.synthetic.dead_modality": ""}
                remedy += f' Here {SYNTHETIC_HINT}: set data.synthetic.dead_modality = "".'
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title=f"the {modality} stream is dead: every sample is the same ({same})",
                evidence={
                    **self.samples.coverage(),
                    "modality": modality,
                    "samples": len(scan.empty),
                    "distinct_samples": 1,
                    "value": scan.constant,
                },
                remedy=remedy,
                config_patch=patch,
                explains=("gradient-flow",),
            )

    def _silent_streams(
        self,
        ctx: DiagnosisContext,
        lifts: dict[str, float | None],
        rows_measured: int,
        synthetic: bool,
    ) -> Iterator[Finding]:
        measured = {m: lift for m, lift in lifts.items() if lift is not None}
        silent = [m for m, lift in measured.items() if lift < NO_SIGNAL_LIFT]
        if not silent:
            return
        evidence = {
            "class_signal_lift": {m: round(lift, 3) for m, lift in measured.items()},
            "silent_below": NO_SIGNAL_LIFT,
            "rows_measured": rows_measured,
        }
        if len(measured) >= 2 and len(silent) == len(measured):
            # Every stream unrelated to the labels: the labels, not the streams, are out of step.
            patch = {}
            if synthetic and ctx.config.data.synthetic.label_noise > 0:
                patch = {"data.synthetic.label_noise": 0.0}
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title="no stream predicts the labels better than chance: the labels look "
                "shuffled against the data",
                evidence=evidence,
                remedy="Check that the manifest's label column is in the arrays' row order and "
                "holds the right labels.",
                config_patch=patch,
                explains=("gradient-flow",),
            )
            return
        for modality in silent:
            yield Finding(
                check=self.name,
                severity=Severity.ERROR,
                title=f"the {modality} stream carries no class signal: its summaries predict "
                f"the labels no better than chance (lift {measured[modality]:.2f})",
                evidence={"modality": modality, **evidence},
                remedy=f"Check that {modality}.npy is written in the manifest's row order and "
                "holds the recordings it should; a stream out of step with the labels teaches "
                "its encoder noise.",
                explains=("gradient-flow",),
            )

    def _duplicates_and_leakage(
        self, ctx: DiagnosisContext, scans: dict[str, StreamScan]
    ) -> Iterator[Finding]:
        ids = self.samples.sample_ids
        is_val = self.samples.is_val
        _, id_group = np.unique(ids.astype(str), return_inverse=True)
        # A sample's content is its four 64-bit row digests; a false match needs four collisions.
        digests = np.stack([scan.digests for scan in scans.values()], axis=1)
        _, content_group = np.unique(digests, axis=0, return_inverse=True)
        repeated_id = repeats_earlier(id_group)
        repeated_content = repeats_earlier(content_group) & ~repeated_id
        duplicate = repeated_id | repeated_content
        if duplicate.any():
            share = float(duplicate.mean())
            yield Finding(
                check=self.name,
                severity=Severity.ERROR if share > DUPLICATE_ERROR_SHARE else Severity.WARNING,
                title=f"{int(duplicate.sum())} of {len(ids)} samples are repeats "
                f"({int(repeated_id.sum())} by sample id, {int(repeated_content.sum())} by "
                "identical content)",
                evidence={
                    "duplicate_samples": int(duplicate.sum()),
                    "share": round(share, 4),
                    "repeated_sample_ids": int(repeated_id.sum()),
                    "identical_content": int(repeated_content.sum()),
                    "first_sample_ids": first_ids(ids, duplicate),
                },
                remedy="Give every sample one id and drop the repeats; a duplicate counts twice "
                "in the loss and makes the dataset look larger than it is.",
            )

        by_id = is_val & np.isin(id_group, id_group[~is_val])
        by_content = is_val & np.isin(content_group, content_group[~is_val])
        leaked = by_id | by_content
        if leaked.any():
            share = float(leaked.sum() / is_val.sum())
            yield Finding(
                check=self.name,
                severity=Severity.ERROR if share > LEAKAGE_ERROR_SHARE else Severity.WARNING,
                title=f"{int(leaked.sum())} of {int(is_val.sum())} validation samples are also "
                "in the training split: val_accuracy is inflated",
                evidence={
                    "leaked_val_samples": int(leaked.sum()),
                    "share_of_val": round(share, 4),
                    "by_sample_id": int(by_id.sum()),
                    "by_identical_content": int(by_content.sum()),
                    "first_sample_ids": first_ids(ids, leaked),
                },
                remedy="Put every sample (and every recording or subject that several samples "
                "share) in one split only; drop the leaked samples from val.",
            )

    def _empty_rows(self, ctx: DiagnosisContext, scans: dict[str, StreamScan]) -> Iterator[Finding]:
        # A dead stream is empty everywhere and already reported as dead.
        empty = {m: scan.empty for m, scan in scans.items() if scan.varies and scan.empty.any()}
        if not empty:
            return
        ids = self.samples.sample_ids
        by_modality = {
            m: {
                "samples": int(rows.sum()),
                "share": round(float(rows.mean()), 4),
                "first_sample_ids": first_ids(ids, rows),
            }
            for m, rows in empty.items()
        }
        worst_share = max(float(rows.mean()) for rows in empty.values())
        where = ", ".join(
            f"{m} {counts['samples']} ({'all padding' if m == 'text' else 'one value throughout'})"
            for m, counts in by_modality.items()
        )
        yield Finding(
            check=self.name,
            severity=Severity.ERROR if worst_share > EMPTY_ROWS_ERROR_SHARE else Severity.WARNING,
            title=f"samples with an empty stream: {where} of {len(ids)}",
            evidence={"by_modality": by_modality, "worst_share": round(worst_share, 4)},
            remedy="Re-export or drop the empty samples: the stream's encoder sees nothing on "
            "them (an all-padding text row encodes to a zero vector).",
        )
