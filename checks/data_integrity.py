"""data-integrity: what the arrays hold — NaN/Inf, dead streams, duplicates, leakage, empty rows."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext, indices_of, streams_of
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.synthetic import SILENT_FRACTION

# A large stream is read on a sample of this many rows: one seeded-random row in each of as many
# equal parts of the dataset. Every row has the same chance, every part of the file (so every
# class of a class-sorted file) is visited, and the rows are read in file order. A fault in a
# share p of the rows is missed with probability at most (1 - p)^n, as with independent draws, so
# a clean sample bounds p below 3/n at 95 % confidence (the rule of three): 0.073 % for 4,096 rows.
# 4,096 rows of the embedded video are 57 MB; the whole check took 0.59 s at 150,000 samples and
# 0.34 s at 15,000, from page cache (benchmarks/scale.py), where reading everything took 5.9 s.
SCAN_ROWS = 4096
SAMPLE_SEED = 0
# A stream whose whole array is at most this large is read in full, exactly: it costs about what
# the sample of a large one does (the embedded text is 29 MB at 150,000 samples, its video 2 GB).
FULL_STREAM_BYTES = 64 * 2**20
# Large samples are sampled more thinly, to read at most this much in all (4,096 clips of 16
# 224x224 frames would be 9.9 GB), but never on fewer rows than the class-signal measure uses.
SCAN_BYTES = 2**30
# Samples whose fully read streams are identical are compared on their sampled streams too: at
# most this many (each a read of one row per sampled stream).
CANDIDATE_ROWS = SCAN_ROWS
# Rows read from a memory-mapped array at a time, at most ...
CHUNK_ROWS = 4096
# ... and at most this many bytes, so a chunk and the digest's 64-bit copy of it stay in a core's
# L2 cache: digests of 4,096 embedded video rows took 32 ms in 256 KiB chunks, 45 ms in 1 MiB
# ones. A sample larger than this (a 16-frame 224x224 clip is 2.4 MB) is one chunk.
CHUNK_BYTES = 2**18
# Class signal is measured on a fixed random subset of the rows every stream read, so its cost
# does not grow with the dataset. At 1000 rows a stream shuffled against the labels measured a
# lift of at most 0.06 (5 seeds x 40 shuffles), far below the 0.2 below which a stream is silent.
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
# When the whole training split fits, it is read in the sampler's own batches, which the context
# keeps: the probes that follow (loss bounds, LR range test, gradient flow) read none again.
SCAN_SAMPLES = 2000
SCAN_BATCH = 64
SCAN_SECONDS = 15.0

# A row's digest: each 64-bit word of its bytes, salted by its position, through splitmix64's
# finaliser, summed and mixed once more. Identical rows, identical digests; distinct ones collide
# about once in 2^64. In NumPy, with no call per row: SHA-1 row by row spent 2-3 s on the 600,000
# rows of 150,000 samples, mostly in Python; this digests 4,096 video rows in 32 ms and 150,000
# text rows in 23 ms.
MIX_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)

SYNTHETIC_HINT = "the data comes from the synthetic generator (data.path is empty)"


def spread_rows(total: int, size: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """`size` of the rows `0..total-1`, ascending: one seeded-random row in each of `size` equal
    parts (all rows when `total <= size`)."""
    if total <= size:
        return np.arange(total, dtype=np.int64)
    edges = np.arange(size + 1, dtype=np.int64) * total // size
    offsets = np.random.default_rng(seed).random(size) * np.diff(edges)
    return edges[:-1] + offsets.astype(np.int64)


def coverage(scanned: int, total: int) -> dict[str, object]:
    """What a scan of `scanned` of `total` samples covered; for a sample, the smallest share of
    faulty samples it would have seen at 95 % confidence (the rule of three, 3/n)."""
    if scanned >= total:
        return {"scanned": f"all {total:,} samples"}
    bound = 3 / scanned
    return {
        "scanned": f"{scanned:,} of {total:,} samples",
        "undetected_share_95": float(f"{bound:.2g}"),
        "confidence": f"a fault in {100 * bound:.2g} % of samples or more would have been seen "
        "with 95 % confidence",
    }


def counted(found: int, scanned: int, total: int) -> str:
    """`12 of 240 samples`, or `205 of 4,096 scanned samples (of 150,000)` for a sample."""
    if scanned >= total:
        return f"{found:,} of {total:,} samples"
    return f"{found:,} of {scanned:,} scanned samples (of {total:,})"


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


def mix(words: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every output bit depends on every input bit."""
    words ^= words >> np.uint64(30)
    words *= MIX_MULTIPLIERS[0]
    words ^= words >> np.uint64(27)
    words *= MIX_MULTIPLIERS[1]
    words ^= words >> np.uint64(31)
    return words


@functools.lru_cache(maxsize=8)
def _salts(width: int) -> np.ndarray:
    """One pseudo-random 64-bit salt per word position of a row `width` words wide."""
    return mix(np.arange(1, width + 1, dtype=np.uint64) * GOLDEN_GAMMA)


def row_digests(chunk: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's bytes (identical rows, identical digests)."""
    data = np.ascontiguousarray(chunk).reshape(len(chunk), -1).view(np.uint8)
    width = data.shape[1]
    if width % 8:
        padded = np.zeros((len(data), width + (-width) % 8), dtype=np.uint8)
        padded[:, :width] = data
        data = padded
    words = data.view(np.uint64) ^ _salts(data.shape[1] // 8)
    return mix(mix(words).sum(axis=1, dtype=np.uint64))


def array_chunks(array: np.ndarray, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their data) in chunks of at most `CHUNK_ROWS` rows and `CHUNK_BYTES` bytes; `rows`
    ascending. All of `array`'s rows are read in slices, a sample row by row."""
    step = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(array[0].nbytes, 1)))
    whole = len(rows) == len(array)
    for start in range(0, len(rows), step):
        picked = rows[start : start + step]
        chunk = array[picked[0] : picked[-1] + 1] if whole else array[picked]
        yield picked, np.ascontiguousarray(chunk)


@dataclass(frozen=True)
class StreamScan:
    """What one modality's rows hold, for the rows that were read."""

    rows: np.ndarray  # the rows read, ascending
    nonfinite: np.ndarray  # bool per row read: holds a NaN or ±Inf
    empty: np.ndarray  # bool per row read: all padding (text) or one value throughout (the others)
    varies: bool  # some row read differs from the first one
    constant: float | None  # the one value every element holds, when every row read is one
    digests: np.ndarray  # uint64 per row read: a digest of the row's bytes
    summaries: np.ndarray  # (signal rows, features): cheap per-sample summaries, NaN where unread

    def at(self, flags: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`flags` (one per row read) at `rows`, which were all read."""
        return flags[np.searchsorted(self.rows, rows)]


class StreamScanner:
    """Gathers a `StreamScan` chunk by chunk; the chunks' rows may come in any order."""

    def __init__(self, modality: str, size: int, signal_rows: np.ndarray) -> None:
        self.modality = modality
        self.signal_rows = signal_rows
        self.seen = np.zeros(size, dtype=bool)
        self.nonfinite = np.zeros(size, dtype=bool)
        self.empty = np.zeros(size, dtype=bool)
        self.digests = np.zeros(size, dtype=np.uint64)
        self.first: np.ndarray | None = None
        self.varies = False
        self.summaries: np.ndarray | None = None

    def add(self, rows: np.ndarray, chunk: np.ndarray) -> None:
        """Take in the data of `rows` (one per row of `chunk`)."""
        flat = chunk.reshape(len(chunk), -1)
        if self.first is None:
            self.first = flat[0].copy()
        floating = np.issubdtype(chunk.dtype, np.floating)
        if floating:
            self.nonfinite[rows] = ~np.isfinite(flat).all(axis=1)
        if self.modality == "text" or (not floating and chunk.ndim == 2):  # token ids, 0 = pad
            self.empty[rows] = ~flat.any(axis=1)
        else:
            self.empty[rows] = flat.min(axis=1) == flat.max(axis=1)
        self.varies = self.varies or bool((flat != self.first).any())
        self.digests[rows] = row_digests(flat)
        self.seen[rows] = True
        at = np.minimum(np.searchsorted(self.signal_rows, rows), len(self.signal_rows) - 1)
        signal = self.signal_rows[at] == rows if len(self.signal_rows) else at < 0
        if signal.any() and self.modality in SUMMARIES:
            with np.errstate(invalid="ignore", over="ignore"):  # NaN rows are dropped later
                values = SUMMARIES[self.modality](chunk[signal])
            if self.summaries is None:
                self.summaries = np.full((len(self.signal_rows), values.shape[1]), np.nan)
            self.summaries[at[signal]] = values

    def result(self) -> StreamScan:
        """What the rows taken in hold."""
        rows = np.flatnonzero(self.seen)
        first = self.first if self.first is not None else np.zeros(1)
        one_value = not self.varies and first.min() == first.max()
        summaries = self.summaries
        if summaries is None:
            summaries = np.zeros((len(self.signal_rows), 0))
        return StreamScan(
            rows,
            self.nonfinite[rows],
            self.empty[rows],
            self.varies,
            first[0].item() if one_value else None,
            self.digests[rows],
            summaries,
        )


@dataclass(frozen=True)
class Scanned:
    """What the check read: a scan of each stream, and each sample's label, id and split.

    Rows are dataset rows for memory-mapped arrays; for a dataset read item by item, positions in
    the list of items planned (training items, then validation items, each ascending)."""

    scans: dict[str, StreamScan]
    rows: np.ndarray  # the rows that hold a sample: every dataset row, or every item read
    labels: np.ndarray  # per row
    sample_ids: np.ndarray  # per row
    is_val: np.ndarray  # per row
    total: int  # samples in the dataset(s), read or not
    signal_rows: np.ndarray  # the rows the class-signal measure summarised
    sampling: str  # how the rows read were chosen, in words
    arrays: dict[str, np.ndarray] | None = None  # the memory-mapped arrays, to read more rows of

    def complete(self, scan: StreamScan) -> bool:
        """Whether `scan` read every row there is."""
        return len(scan.rows) == len(self.rows)

    def coverage(self, scan: StreamScan) -> dict[str, object]:
        """What `scan` covered of the dataset."""
        return coverage(len(scan.rows), self.total)


@dataclass(frozen=True)
class Content:
    """Which samples are byte-identical in every stream, on the rows compared."""

    rows: np.ndarray  # the rows compared
    groups: np.ndarray  # per row compared: rows with the same group hold the same content
    compared: str  # what was compared, in words


def signal_rows_of(sample: np.ndarray) -> np.ndarray:
    """The rows, of a sample every stream read, that the class-signal measure summarises."""
    rng = np.random.default_rng(SIGNAL_SEED)
    picks = rng.choice(len(sample), size=min(len(sample), SIGNAL_ROWS), replace=False)
    return np.sort(sample[picks])


def scan_arrays(ctx: DiagnosisContext, arrays: dict[str, np.ndarray]) -> Scanned:
    """Each memory-mapped array: in full when it is small (or on `ctx.full_scan`), else on one
    spread sample of rows shared by every large stream (see `SCAN_ROWS`)."""
    dataset = ctx.train_dataset
    labels = ctx.labels
    n = len(labels)
    splits = np.asarray(getattr(dataset, "splits", np.full(n, "train")))
    ids = np.asarray(getattr(dataset, "sample_ids", np.arange(n).astype(str)))
    row_bytes = sum(array[0].nbytes for array in arrays.values())
    size = min(SCAN_ROWS, max(SCAN_BYTES // max(row_bytes, 1), SIGNAL_ROWS))
    everything = np.arange(n, dtype=np.int64)
    sample = everything if ctx.full_scan else spread_rows(n, size)
    plans = {
        modality: everything if array.nbytes <= FULL_STREAM_BYTES else sample
        for modality, array in arrays.items()
    }
    signal_rows = signal_rows_of(sample)
    planned, done = sum(len(rows) for rows in plans.values()), 0
    scans = {}
    for modality, array in arrays.items():
        scanner = StreamScanner(modality, n, signal_rows)
        for rows, chunk in array_chunks(array, plans[modality]):
            scanner.add(rows, chunk)
            done += len(rows)
            if ctx.on_progress:
                ctx.on_progress(f"data-integrity: reading {modality}", done, planned)
        scans[modality] = scanner.result()
    sampling = (
        "every row of every stream"
        if len(sample) == n
        else f"streams over {FULL_STREAM_BYTES // 2**20} MiB on one seeded-random row in each of "
        f"{len(sample):,} equal parts of the dataset; smaller streams in full"
    )
    return Scanned(
        scans, everything, labels, ids, splits == "val", n, signal_rows, sampling, arrays
    )


def scan_through_dataset(ctx: DiagnosisContext) -> Scanned:
    """Up to `SCAN_SAMPLES` training and `SCAN_SAMPLES // 4` validation items (every item on
    `ctx.full_scan`), read through the user's dataset, collate function and `batch_fn` within
    `SCAN_SECONDS`, scanned batch by batch."""
    full = ctx.full_scan
    ctx.read_by = ""
    train = np.unique(ctx.train_indices)
    train_plan = train if full else train[spread_rows(len(train), SCAN_SAMPLES)]
    parts = [("train", ctx.setup.train_loader, train_plan)]
    total = len(train)
    val_loader = ctx.setup.val_loader
    if val_loader is not None and getattr(val_loader, "dataset", None) is not None:
        val_rows = np.unique(_val_rows(val_loader))
        val_plan = val_rows if full else val_rows[spread_rows(len(val_rows), SCAN_SAMPLES // 4)]
        parts.append(("val", val_loader, val_plan))
        total += len(val_rows)
    size = sum(len(plan) for _, _, plan in parts)
    labels = np.zeros(size, dtype=np.int64)
    read = np.zeros(size, dtype=bool)
    ids = np.concatenate([[f"{split}[{int(i)}]" for i in plan] for split, _, plan in parts])
    is_val = np.concatenate([np.full(len(plan), split == "val") for split, _, plan in parts])
    signal_rows = signal_rows_of(np.arange(size))
    scanners: dict[str, StreamScanner] = {}
    misshapen: set[str] = set()
    started = time.perf_counter()
    offset = done = 0
    cut_short = False
    for split, loader, plan in parts:
        whole = split == "train" and len(plan) == len(train)
        # (batch, kept by the context, to be read): the ones to read go to the loader at once
        planned = [
            (b, kept, not (kept and ctx.cached(b))) for b, kept in _scan_batches(ctx, plan, whole)
        ]
        fresh = ctx.read_batches([batch for batch, _, new in planned if new], loader)
        for batch, kept, new in planned:
            cut_short = not full and time.perf_counter() - started > SCAN_SECONDS
            if cut_short:
                break
            collated = next(fresh) if new else None
            if kept:
                inputs, batch_labels = ctx.host_batch(batch, collated)
            else:
                inputs, batch_labels = ctx.batch_fn(collated)
            position = np.searchsorted(plan, batch)
            wanted = (position < len(plan)) & (plan[np.minimum(position, len(plan) - 1)] == batch)
            rows = offset + position[wanted]
            labels[rows] = np.asarray(torch.as_tensor(batch_labels).cpu()).reshape(-1)[wanted]
            read[rows] = True
            for name, value in streams_of(inputs).items():
                if len(value) != len(batch):  # not one row per sample
                    misshapen.add(name)
                    continue
                scanner = scanners.setdefault(name, StreamScanner(name, size, signal_rows))
                scanner.add(rows, host_array(value)[wanted])
            done = min(done + len(rows), size)
            if ctx.on_progress:
                ctx.on_progress("data-integrity: reading samples", done, size)
        fresh.close()  # a scan cut short lets the loader's workers go
        offset += len(plan)
    read = np.flatnonzero(read)
    scans = {name: scanner.result() for name, scanner in scanners.items() if name not in misshapen}
    scans = {name: scan for name, scan in scans.items() if len(scan.rows) == len(read)}
    sampling = (
        "every training and validation item"
        if len(read) == total
        else f"{len(read):,} of {total:,} items through the dataset: one seeded-random item in "
        "each of as many equal parts of each split"
    )
    if cut_short:
        sampling += f", cut short after {SCAN_SECONDS:g} s"
    if ctx.read_by:
        sampling += f"; read by {ctx.read_by}"
    return Scanned(scans, read, labels, ids, is_val, total, signal_rows, sampling)


def _scan_batches(
    ctx: DiagnosisContext, plan: np.ndarray, whole: bool
) -> Iterator[tuple[np.ndarray, bool]]:
    """The batches to read `plan` in, each with whether the context keeps it: for the whole
    training split, the sampler's own batches (kept for the probes, which read the same), then
    any row they leave out; else chunks of `SCAN_BATCH`."""
    if whole:
        try:
            batches = ctx.epoch_batches()
        except Exception:  # a broken sampler is sampler-class-mix's finding, not this one's
            batches = []
        if sum(len(b) for b in batches) <= max(len(plan), SCAN_SAMPLES):
            yield from ((batch, True) for batch in batches)
            read = np.unique(np.concatenate(batches)) if batches else plan[:0]
            plan = np.setdiff1d(plan, read, assume_unique=True)
    for start in range(0, len(plan), SCAN_BATCH):
        yield plan[start : start + SCAN_BATCH], False


def host_array(value: torch.Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host (bfloat16, which NumPy lacks, as float32)."""
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _val_rows(loader) -> np.ndarray:
    """The dataset indices a validation loader reads."""
    rows = indices_of(loader)
    return rows if rows is not None else np.arange(len(loader.dataset), dtype=np.int64)


def content_keys(digests: list[np.ndarray]) -> np.ndarray:
    """One 64-bit key per row from its streams' digests (same digests, same key)."""
    key = np.zeros(len(digests[0]), dtype=np.uint64)
    for column in digests:
        key = mix(key * GOLDEN_GAMMA + column)
    return key


def content_groups(scanned: Scanned) -> Content:
    """Which rows hold identical content in every stream.

    Every stream read in full: compared on every row. Some read in full, some sampled: every row
    is compared on the full ones, and the few rows that share their content there on the sampled
    ones too (at most `CANDIDATE_ROWS`), so a duplicate is found wherever it lies. None in full:
    compared on the sample.
    """
    scans = scanned.scans
    complete = [m for m, scan in scans.items() if scanned.complete(scan)]
    partial = [m for m in scans if m not in complete]
    if not partial or not complete:
        rows = scanned.rows if not partial else scans[partial[0]].rows
        key = content_keys([scan.at(scan.digests, rows) for scan in scans.values()])
        compared = (
            "every sample, in every stream"
            if len(rows) == scanned.total
            else f"the {len(rows):,} scanned samples of {scanned.total:,}, in every stream"
        )
        return Content(rows, np.unique(key, return_inverse=True)[1], compared)
    rows = scanned.rows
    key = content_keys([scans[m].digests for m in complete])
    _, groups, counts = np.unique(key, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[groups] > 1)
    checked = np.sort(candidates[np.argsort(groups[candidates], kind="stable")][:CANDIDATE_ROWS])
    # candidates left unchecked are kept apart: they are not counted as duplicates
    extra = [np.arange(len(rows), dtype=np.uint64) for _ in partial]
    for column, modality in zip(extra, partial, strict=True):
        for picked, chunk in array_chunks(scanned.arrays[modality], rows[checked]):
            column[np.searchsorted(rows, picked)] = row_digests(chunk)
    key[candidates] = content_keys([key[candidates], *(c[candidates] for c in extra)])
    compared = (
        f"every sample on {', '.join(complete)} (read in full); {', '.join(partial)} on the "
        f"{len(checked):,} samples identical there"
        + (f" (of {len(candidates):,})" if len(checked) < len(candidates) else "")
    )
    return Content(rows, np.unique(key, return_inverse=True)[1], compared)


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
    """The sample ids of the first `SHOWN_IDS` of `rows` (ascending)."""
    return [str(sample_ids[r]) for r in rows[:SHOWN_IDS]]


def repeats_earlier(group: np.ndarray) -> np.ndarray:
    """Rows whose group (id, content) already occurred in an earlier row."""
    first = np.zeros(len(group), dtype=bool)
    first[np.unique(group, return_index=True)[1]] = True
    return ~first


class DataIntegrity(Check):
    """What the arrays hold: NaN/Inf, dead streams, duplicates, train/val leakage, empty rows.

    What it checks:
        Samples holding NaN or Inf; streams that are the same in every sample (dead), or that
        vary but carry no class signal (a nearest-class-mean classifier on cheap summaries —
        spectral bands, edge and motion energy, token histograms — does no better than chance);
        duplicate sample ids and samples byte-identical in all four streams; validation samples
        whose id or content is also in the training split; and empty rows (text that is all
        padding, a video, audio or sensor row holding one value throughout). Labels with no name
        in classes.json are rejected by the dataset loader before any check runs.

        What it reads does not grow with the dataset. Sample ids come from the manifest and are
        compared in full. A memory-mapped array of at most 64 MiB is read in full; a larger one on
        4,096 rows, one seeded-random row in each of 4,096 equal parts of the file (fewer when a
        sample is so large that they would exceed 1 GiB). Content duplicates are still found
        everywhere when a stream is read in full: only the samples identical there are compared
        on the other streams. A user's dataset without such arrays is read through its own
        `__getitem__`, collate function and `batch_fn`: up to 2,000 training and 500 validation
        items, at most 15 s, through the loader's own worker processes when it has some
        (`num_workers` > 0), as training reads it (here instead, should they fail; the coverage
        says which). The evidence says what was read (`scanned 4,096 of 150,000 samples`) and
        the smallest share of faulty samples the sample would have seen with 95 % confidence
        (the rule of three, 3/n: 0.073 % for 4,096). `diagnose --full-scan` reads everything
        instead, with a progress bar.

    Why it matters:
        One NaN sample makes the loss NaN in every batch it lands in, and one step on that loss
        makes the weights NaN for good: the loss, the LR range test and the gradients then all
        look broken when only the data is. A dead stream gives its encoder nothing to learn from,
        so its gradients vanish; a stream out of step with the labels teaches noise. Duplicates
        count twice, samples in both splits inflate `val_accuracy`, and on an empty row the
        stream's encoder sees nothing.

    Example:
        `--set data.synthetic.nan_fraction=0.01`: "15 of 1,500 samples hold NaN or Inf (sensor
        15)", CRITICAL. `--set data.synthetic.dead_modality=audio`: "the audio stream is dead:
        every sample is the same (all 0.0)", ERROR. On 150,000 samples with NaN in 5 % of them
        (benchmarks/scale.py): "198 of 4,096 scanned samples (of 150,000) hold NaN or Inf
        (sensor 198)".

    Fix:
        Drop or repair the samples the evidence names and re-export the arrays; write every
        array in the manifest's row order; give every sample one id and one split. For the
        synthetic generator, `data.synthetic.nan_fraction = 0.0` and
        `data.synthetic.dead_modality = ""` turn off the faults it was asked to make. A single bad
        sample in a huge dataset may slip through the sample: `--full-scan` finds every one.
    """

    name = "data-integrity"
    phase = "data"
    order = 10

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        arrays = getattr(ctx.train_dataset, "arrays", None)
        if isinstance(arrays, dict) and arrays:
            scanned = scan_arrays(ctx, dict(arrays))
        else:
            scanned = scan_through_dataset(ctx)
        if not scanned.scans:
            raise SkipCheck("the batches hold no tensor inputs to scan")
        self.scanned = scanned
        labels = scanned.labels[scanned.signal_rows]
        lifts = {
            m: class_signal_lift(scan.summaries, labels)
            for m, scan in scanned.scans.items()
            if scan.varies
        }
        content = content_groups(scanned)
        ctx.published["data_integrity_coverage"] = {
            "sampling": scanned.sampling,
            "streams": {m: scanned.coverage(scan) for m, scan in scanned.scans.items()},
            "content_compared": content.compared,
        }
        synthetic = ctx.config is not None and ctx.config.data.path == ""
        yield from self._nonfinite(ctx, synthetic)
        yield from self._dead_streams(ctx, synthetic)
        yield from self._silent_streams(ctx, lifts, synthetic)
        yield from self._duplicates_and_leakage(content)
        yield from self._empty_rows()

    def _nonfinite(self, ctx: DiagnosisContext, synthetic: bool) -> Iterator[Finding]:
        scanned = self.scanned
        ids = scanned.sample_ids
        affected = {m: scan for m, scan in scanned.scans.items() if scan.nonfinite.any()}
        if not affected:
            return
        by_modality = {
            m: {
                "samples": int(scan.nonfinite.sum()),
                **scanned.coverage(scan),
                "share": round(float(scan.nonfinite.mean()), 4),
                "first_sample_ids": first_ids(ids, scan.rows[scan.nonfinite]),
            }
            for m, scan in affected.items()
        }
        # the headline counts the rows every affected stream read: all, or the shared sample
        rows = affected[next(iter(affected))].rows
        for scan in affected.values():
            rows = np.intersect1d(rows, scan.rows, assume_unique=True)
        bad = np.logical_or.reduce([scan.at(scan.nonfinite, rows) for scan in affected.values()])
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
            title=f"{counted(int(bad.sum()), len(rows), scanned.total)} hold NaN or Inf "
            f"({where}): each poisons its batches, then the weights",
            evidence={
                **coverage(len(rows), scanned.total),
                "samples": int(bad.sum()),
                "share": round(float(bad.mean()), 4),
                "first_sample_ids": first_ids(ids, rows[bad]),
                "by_modality": by_modality,
            },
            remedy=remedy,
            config_patch=patch,
            explains=("loss-bounds", "lr-range-test", "gradient-flow"),
        )

    def _dead_streams(self, ctx: DiagnosisContext, synthetic: bool) -> Iterator[Finding]:
        scanned = self.scanned
        dead_knob = ctx.config.data.synthetic.dead_modality if synthetic else ""
        for modality, scan in scanned.scans.items():
            if scan.varies:
                continue
            same = f"all {scan.constant}" if scan.constant is not None else "one repeated row"
            read = len(scan.rows)
            every = (
                "every sample is the same"
                if read >= scanned.total
                else f"all {read:,} scanned samples (of {scanned.total:,}) are the same"
            )
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
                title=f"the {modality} stream is dead: {every} ({same})",
                evidence={
                    **scanned.coverage(scan),
                    "modality": modality,
                    "samples": read,
                    "distinct_samples": 1,
                    "value": scan.constant,
                },
                remedy=remedy,
                config_patch=patch,
                explains=("gradient-flow",),
            )

    def _silent_streams(
        self, ctx: DiagnosisContext, lifts: dict[str, float | None], synthetic: bool
    ) -> Iterator[Finding]:
        measured = {m: lift for m, lift in lifts.items() if lift is not None}
        silent = [m for m, lift in measured.items() if lift < NO_SIGNAL_LIFT]
        if not silent:
            return
        evidence = {
            "class_signal_lift": {m: round(lift, 3) for m, lift in measured.items()},
            "silent_below": NO_SIGNAL_LIFT,
            "rows_measured": len(self.scanned.signal_rows),
            "of_samples": self.scanned.total,
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

    def _duplicates_and_leakage(self, content: Content) -> Iterator[Finding]:
        scanned = self.scanned
        rows = scanned.rows
        ids = scanned.sample_ids[rows]
        is_val = scanned.is_val[rows]
        _, id_group = np.unique(ids.astype(str), return_inverse=True)
        # per row: its content group among the rows compared, -1 (apart from all) elsewhere
        where = np.searchsorted(rows, content.rows)
        content_group = np.full(len(rows), -1, dtype=np.int64)
        content_group[where] = content.groups
        repeated_id = repeats_earlier(id_group)
        repeated_content = np.zeros(len(rows), dtype=bool)
        repeated_content[where] = repeats_earlier(content.groups)
        repeated_content &= ~repeated_id
        duplicate = repeated_id | repeated_content
        partial = len(content.rows) < len(rows)
        among = f" among the {len(content.rows):,} scanned" if partial else ""
        if duplicate.any():
            share = float(duplicate.mean())
            yield Finding(
                check=self.name,
                severity=Severity.ERROR if share > DUPLICATE_ERROR_SHARE else Severity.WARNING,
                title=f"{int(duplicate.sum()):,} of {len(rows):,} samples are repeats "
                f"({int(repeated_id.sum()):,} by sample id, {int(repeated_content.sum()):,} by "
                f"identical content{among})",
                evidence={
                    "duplicate_samples": int(duplicate.sum()),
                    "share": round(share, 4),
                    "repeated_sample_ids": int(repeated_id.sum()),
                    "identical_content": int(repeated_content.sum()),
                    "first_sample_ids": first_ids(scanned.sample_ids, rows[duplicate]),
                    "content_compared": content.compared,
                },
                remedy="Give every sample one id and drop the repeats; a duplicate counts twice "
                "in the loss and makes the dataset look larger than it is.",
            )

        by_id = is_val & np.isin(id_group, id_group[~is_val])
        compared = content_group >= 0
        train_content = content_group[compared & ~is_val]
        by_content = is_val & compared & np.isin(content_group, train_content)
        leaked = by_id | by_content
        if leaked.any():
            share = float(leaked.sum() / is_val.sum())
            yield Finding(
                check=self.name,
                severity=Severity.ERROR if share > LEAKAGE_ERROR_SHARE else Severity.WARNING,
                title=f"{int(leaked.sum()):,} of {int(is_val.sum()):,} validation samples are "
                f"also in the training split{among}: val_accuracy is inflated",
                evidence={
                    "leaked_val_samples": int(leaked.sum()),
                    "share_of_val": round(share, 4),
                    "by_sample_id": int(by_id.sum()),
                    "by_identical_content": int(by_content.sum()),
                    "first_sample_ids": first_ids(scanned.sample_ids, rows[leaked]),
                    "content_compared": content.compared,
                },
                remedy="Put every sample (and every recording or subject that several samples "
                "share) in one split only; drop the leaked samples from val.",
            )

    def _empty_rows(self) -> Iterator[Finding]:
        scanned = self.scanned
        # A dead stream is empty everywhere and already reported as dead.
        empty = {m: scan for m, scan in scanned.scans.items() if scan.varies and scan.empty.any()}
        if not empty:
            return
        by_modality = {
            m: {
                "samples": int(scan.empty.sum()),
                **scanned.coverage(scan),
                "share": round(float(scan.empty.mean()), 4),
                "first_sample_ids": first_ids(scanned.sample_ids, scan.rows[scan.empty]),
            }
            for m, scan in empty.items()
        }
        worst_share = max(float(scan.empty.mean()) for scan in empty.values())
        where = ", ".join(
            f"{m} {counts['samples']:,}"
            + (f" of {len(empty[m].rows):,} scanned" if len(empty[m].rows) < scanned.total else "")
            + f" ({'all padding' if m == 'text' else 'one value throughout'})"
            for m, counts in by_modality.items()
        )
        yield Finding(
            check=self.name,
            severity=Severity.ERROR if worst_share > EMPTY_ROWS_ERROR_SHARE else Severity.WARNING,
            title=f"samples with an empty stream: {where} of {scanned.total:,}",
            evidence={"by_modality": by_modality, "worst_share": round(worst_share, 4)},
            remedy="Re-export or drop the empty samples: the stream's encoder sees nothing on "
            "them (an all-padding text row encodes to a zero vector).",
        )
