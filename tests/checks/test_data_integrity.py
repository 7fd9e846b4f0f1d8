from __future__ import annotations

import os
import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from quad_doctor.checks import data_integrity
from quad_doctor.checks.data_integrity import DataIntegrity, spread_rows
from quad_doctor.context import DiagnosisContext
from quad_doctor.engine import diagnose
from quad_doctor.errors import DatasetError
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import SyntheticConfig, load_config
from quad_doctor.trainer.synthetic import write_dataset

SMALL = "data.synthetic.num_samples=240"
SETUPS = Path(__file__).resolve().parents[1] / "user_scenarios" / "setups.py"
USER_SETUPS = runpy.run_path(str(SETUPS))


def findings(*overrides):
    return list(DataIntegrity().run(DiagnosisContext(load_config(overrides=list(overrides)))))


def on_disk(directory):
    return f'data.path="{directory}"'


def only(found, severity):
    (finding,) = found
    assert finding.severity is severity
    return finding


class DatasetCopy:
    """A private copy of a dataset directory to break on purpose."""

    def __init__(self, source, target):
        self.path = shutil.copytree(source, target)

    def manifest(self):
        return pd.read_csv(self.path / "manifest.csv", dtype={"sample_id": str})

    def save_manifest(self, table):
        table.to_csv(self.path / "manifest.csv", index=False)

    def array(self, modality):
        return np.load(self.path / f"{modality}.npy")

    def save_array(self, modality, array):
        np.save(self.path / f"{modality}.npy", array)

    def copy_content(self, sources, targets):
        """Make the samples at `targets` byte-identical to those at `sources`, ids unchanged."""
        for modality in ("video", "audio", "sensor", "text"):
            array = self.array(modality)
            array[targets] = array[sources]
            self.save_array(modality, array)

    def findings(self):
        return findings(on_disk(self.path))


@pytest.fixture
def dataset_copy(small_dataset, tmp_path):
    return DatasetCopy(small_dataset, tmp_path / "data")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_data_of_several_seeds_is_quiet(seed):
    assert findings(SMALL, f"data.synthetic.seed={seed}") == []


def test_nan_samples_are_critical_and_named():
    found = only(findings(SMALL, "data.synthetic.nan_fraction=0.05"), Severity.CRITICAL)
    assert found.title.startswith("12 of 240 samples hold NaN or Inf (sensor 12)")
    assert found.evidence["samples"] == 12
    assert list(found.evidence["by_modality"]) == ["sensor"]
    assert found.config_patch == {"data.synthetic.nan_fraction": 0.0}
    assert set(found.explains) == {"loss-bounds", "lr-range-test", "gradient-flow"}
    ctx = DiagnosisContext(load_config(overrides=[SMALL, "data.synthetic.nan_fraction=0.05"]))
    named = np.isin(ctx.train_dataset.sample_ids, found.evidence["first_sample_ids"])
    assert named.sum() == len(found.evidence["first_sample_ids"]) > 0
    assert (~np.isfinite(ctx.train_dataset.arrays["sensor"][named])).any(axis=(1, 2)).all()


def test_nan_in_a_dataset_on_disk_gets_no_config_patch(tmp_path):
    directory = write_dataset(SyntheticConfig(num_samples=240, nan_fraction=0.02), tmp_path / "d")
    found = only(findings(on_disk(directory)), Severity.CRITICAL)
    assert found.evidence["samples"] == 5
    assert found.config_patch == {}


@pytest.mark.parametrize("modality", ["video", "audio", "sensor", "text"])
def test_each_dead_modality_is_an_error_that_explains_gradient_flow(modality):
    found = only(findings(SMALL, f'data.synthetic.dead_modality="{modality}"'), Severity.ERROR)
    assert found.title.startswith(f"the {modality} stream is dead: every sample is the same")
    assert found.evidence["modality"] == modality
    assert found.evidence["distinct_samples"] == 1
    assert found.config_patch == {"data.synthetic.dead_modality": ""}
    assert found.explains == ("gradient-flow",)


def test_a_stream_out_of_step_with_the_labels_has_no_class_signal(dataset_copy):
    sensor = dataset_copy.array("sensor")
    dataset_copy.save_array("sensor", sensor[np.random.default_rng(0).permutation(len(sensor))])
    found = only(dataset_copy.findings(), Severity.ERROR)
    assert found.title.startswith("the sensor stream carries no class signal")
    lift = found.evidence["class_signal_lift"]
    assert lift["sensor"] < found.evidence["silent_below"] < min(lift["video"], lift["text"])
    assert found.config_patch == {}


def test_labels_unrelated_to_every_stream_are_blamed_once():
    found = only(findings(SMALL, "data.synthetic.label_noise=1.0"), Severity.ERROR)
    assert "no stream predicts the labels" in found.title
    assert max(found.evidence["class_signal_lift"].values()) < found.evidence["silent_below"]
    assert found.config_patch == {"data.synthetic.label_noise": 0.0}


def test_a_repeated_sample_id_is_a_warning(dataset_copy):
    table = dataset_copy.manifest()
    train = np.flatnonzero(table["split"] == "train")
    table.loc[train[1], "sample_id"] = table.loc[train[0], "sample_id"]
    dataset_copy.save_manifest(table)
    found = only(dataset_copy.findings(), Severity.WARNING)
    assert found.title == "1 of 240 samples are repeats (1 by sample id, 0 by identical content)"
    assert found.evidence["first_sample_ids"] == [table.loc[train[0], "sample_id"]]


def test_many_identical_samples_under_new_ids_are_an_error(dataset_copy):
    train = np.flatnonzero(dataset_copy.manifest()["split"] == "train")
    dataset_copy.copy_content(train[:15], train[15:30])  # 15 of 240 = 6 %
    found = only(dataset_copy.findings(), Severity.ERROR)
    assert found.evidence["identical_content"] == 15
    assert found.evidence["repeated_sample_ids"] == 0
    assert found.evidence["share"] == pytest.approx(15 / 240, abs=1e-4)


def test_a_sample_id_in_both_splits_is_leakage(dataset_copy):
    table = dataset_copy.manifest()
    train_id = table.loc[table["split"] == "train", "sample_id"].iloc[0]
    table.loc[np.flatnonzero(table["split"] == "val")[0], "sample_id"] = train_id
    dataset_copy.save_manifest(table)
    found = dataset_copy.findings()
    leak = next(f for f in found if "validation samples" in f.title)
    assert leak.severity is Severity.WARNING
    assert leak.title.startswith("1 of 48 validation samples are also in the training split")
    assert leak.evidence["by_sample_id"] == 1
    assert leak.evidence["first_sample_ids"] == [train_id]


def test_validation_samples_copied_from_train_are_an_error(dataset_copy):
    splits = dataset_copy.manifest()["split"]
    train, val = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    dataset_copy.copy_content(train[:6], val[:6])  # 6 of 48 = 12.5 % of val
    leak = next(f for f in dataset_copy.findings() if "validation samples" in f.title)
    assert leak.severity is Severity.ERROR
    assert leak.evidence["by_identical_content"] == 6
    assert leak.evidence["by_sample_id"] == 0
    assert leak.evidence["share_of_val"] == 0.125


def test_a_few_all_padding_text_rows_are_a_warning(dataset_copy):
    text = dataset_copy.array("text")
    text[[3, 7]] = 0
    dataset_copy.save_array("text", text)
    found = only(dataset_copy.findings(), Severity.WARNING)
    assert "text 2 (all padding)" in found.title
    assert found.evidence["by_modality"]["text"]["first_sample_ids"] == ["s000003", "s000007"]


def test_many_empty_rows_are_an_error(dataset_copy):
    text, audio = dataset_copy.array("text"), dataset_copy.array("audio")
    text[::8] = 0  # 30 of 240 = 12.5 %
    audio[:3] = 0.0
    dataset_copy.save_array("text", text)
    dataset_copy.save_array("audio", audio)
    found = only(dataset_copy.findings(), Severity.ERROR)
    assert "audio 3 (one value throughout)" in found.title
    assert "text 30 (all padding)" in found.title
    assert found.evidence["worst_share"] == 0.125


def test_a_label_missing_from_classes_json_is_rejected_by_the_loader(dataset_copy):
    table = dataset_copy.manifest()
    table.loc[10, "label"] = 6  # classes.json names six classes, 0-5
    dataset_copy.save_manifest(table)
    with pytest.raises(DatasetError, match="has no name in classes.json"):
        dataset_copy.findings()


# -- bounded by work: a sample of a large stream, stated coverage, a full scan on request ------

# Small stand-ins for the budgets, so the 240-sample dataset is "large": 64 sampled rows (the
# rule of three then bounds a missed fault below 3/64 = 4.7 %), and only text (46 KB) in full.
SAMPLED = 64


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(data_integrity, "SCAN_ROWS", SAMPLED)
    monkeypatch.setattr(data_integrity, "SIGNAL_ROWS", SAMPLED)
    monkeypatch.setattr(data_integrity, "FULL_STREAM_BYTES", 64 * 2**10)


def scan(*overrides, full_scan=False):
    ctx = DiagnosisContext(load_config(overrides=list(overrides)), full_scan=full_scan)
    return list(DataIntegrity().run(ctx)), ctx


def test_the_sample_is_spread_over_the_dataset_and_the_same_every_time():
    rows = spread_rows(150_000, 4096)
    assert np.array_equal(rows, spread_rows(150_000, 4096))
    assert len(np.unique(rows)) == 4096 and rows[0] >= 0 and rows[-1] < 150_000
    parts = np.arange(4096) * 150_000 // 4096  # one row in each equal part
    assert np.array_equal(np.searchsorted(parts, rows, side="right") - 1, np.arange(4096))
    assert np.array_equal(spread_rows(240, 4096), np.arange(240))


def test_a_nan_share_above_the_stated_bound_is_found_in_the_sample(small_budget):
    found, ctx = scan(SMALL, "data.synthetic.nan_fraction=0.1")  # 24 of 240 = 10 % > 4.7 %
    nan = only(found, Severity.CRITICAL)
    assert nan.title.startswith(f"{nan.evidence['samples']} of {SAMPLED} scanned samples (of 240)")
    assert nan.evidence["scanned"] == f"{SAMPLED} of 240 samples"
    assert nan.evidence["undetected_share_95"] == pytest.approx(3 / SAMPLED, rel=0.01)
    assert "95 % confidence" in nan.evidence["confidence"]
    assert 0.05 < nan.evidence["share"] < 0.2
    streams = ctx.published["data_integrity_coverage"]["streams"]
    assert streams["text"] == {"scanned": "all 240 samples"}
    assert streams["video"]["scanned"] == f"{SAMPLED} of 240 samples"


def test_a_dead_stream_is_found_in_the_sample(small_budget):
    found, _ = scan(SMALL, 'data.synthetic.dead_modality="video"')
    dead = only(found, Severity.ERROR)
    assert dead.title.startswith(f"the video stream is dead: all {SAMPLED} scanned samples")
    assert dead.evidence["scanned"] == f"{SAMPLED} of 240 samples"


def test_healthy_data_stays_quiet_on_a_sample(small_budget):
    assert scan(SMALL)[0] == []


def test_a_full_scan_finds_the_one_nan_row_the_sample_skips(small_budget, dataset_copy):
    sensor = dataset_copy.array("sensor")
    skipped = int(np.setdiff1d(np.arange(240), spread_rows(240, SAMPLED))[0])
    sensor[skipped, 2, 7] = np.nan
    dataset_copy.save_array("sensor", sensor)
    assert scan(on_disk(dataset_copy.path))[0] == []  # 1 of 240 is below the 4.7 % bound
    progress = []
    ctx = DiagnosisContext(load_config(overrides=[on_disk(dataset_copy.path)]), full_scan=True)
    ctx.on_progress = lambda what, done, total: progress.append((what, done, total))
    nan = only(list(DataIntegrity().run(ctx)), Severity.CRITICAL)
    assert nan.title.startswith("1 of 240 samples hold NaN or Inf (sensor 1)")
    assert nan.evidence["first_sample_ids"] == [f"s{skipped:06d}"]
    assert nan.evidence["scanned"] == "all 240 samples"
    assert progress[-1][1:] == (4 * 240, 4 * 240)
    assert {what for what, _, _ in progress} == {
        f"data-integrity: reading {m}" for m in ("video", "audio", "sensor", "text")
    }


def test_diagnose_full_scan_reads_every_row(small_budget, dataset_copy):
    sensor = dataset_copy.array("sensor")
    skipped = int(np.setdiff1d(np.arange(240), spread_rows(240, SAMPLED))[-1])
    sensor[skipped, 0, 0] = np.inf
    dataset_copy.save_array("sensor", sensor)
    config = load_config(overrides=[on_disk(dataset_copy.path)])
    sampled = diagnose(config, only=["data-integrity"], verify_remedies=False)
    assert sampled.findings == ()
    full = diagnose(config, only=["data-integrity"], verify_remedies=False, full_scan=True)
    assert full.findings[0].finding.evidence["first_sample_ids"] == [f"s{skipped:06d}"]
    coverage = full.measurements["data_integrity_coverage"]
    assert coverage["sampling"] == "every row of every stream"


def test_content_duplicates_are_found_beyond_the_sample(small_budget, dataset_copy):
    train = np.flatnonzero(dataset_copy.manifest()["split"] == "train")
    outside = np.setdiff1d(train, spread_rows(240, SAMPLED))
    dataset_copy.copy_content(outside[:1], outside[1:2])  # neither row is in the sample
    found = only(dataset_copy.findings(), Severity.WARNING)
    assert found.title == "1 of 240 samples are repeats (0 by sample id, 1 by identical content)"
    assert found.evidence["first_sample_ids"] == [f"s{outside[1]:06d}"]
    assert found.evidence["content_compared"].startswith("every sample on text (read in full)")


def test_a_user_dataset_is_sampled_with_its_coverage_stated(monkeypatch):
    monkeypatch.setattr(data_integrity, "SCAN_SAMPLES", 200)
    setup = USER_SETUPS["nan_inputs"]()  # 12 of 600 samples hold NaN
    ctx = DiagnosisContext(setup)
    nan = only(list(DataIntegrity().run(ctx)), Severity.CRITICAL)
    assert nan.title.startswith(f"{nan.evidence['samples']} of 200 scanned samples (of 600)")
    assert nan.evidence["undetected_share_95"] == 0.015


def test_a_small_user_split_is_read_in_the_samplers_batches_once(monkeypatch, tmp_path):
    setup = USER_SETUPS["healthy_supcon"]()
    log = tmp_path / "reads.log"
    dataset = setup.train_loader.dataset
    monkeypatch.setattr(type(dataset), "__getitem__", logging_reads(type(dataset).__getitem__, log))
    ctx = DiagnosisContext(setup)
    assert list(DataIntegrity().run(ctx)) == []
    assert sorted(index for _, index in reads_in(log)) == list(range(len(dataset)))  # each once
    for rows in ctx.epoch_batches():  # what loss-bounds, the LR sweep and gradient flow read
        ctx.batch(rows)
    assert len(reads_in(log)) == len(dataset)


def with_workers(setup, workers=2):
    """The setup with its training loader read by `workers` processes, as it would train."""
    loader = setup.train_loader
    return setup.replace(
        train_loader=DataLoader(
            loader.dataset, batch_sampler=loader.batch_sampler, num_workers=workers
        )
    )


def logging_reads(getitem, log):
    """`__getitem__` that appends "pid index" to `log` (a file, so worker processes write too)."""

    def wrapped(self, index):
        with open(log, "a") as out:
            out.write(f"{os.getpid()} {int(index)}\n")
        return getitem(self, index)

    return wrapped


def reads_in(log):
    """(pid, index) of each read `logging_reads` logged, in order."""
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


def test_a_loader_with_workers_is_read_through_them_with_the_same_findings(monkeypatch, tmp_path):
    monkeypatch.setattr(data_integrity, "SCAN_SAMPLES", 200)
    serial = only(
        list(DataIntegrity().run(DiagnosisContext(USER_SETUPS["nan_inputs"]()))), Severity.CRITICAL
    )
    setup = with_workers(USER_SETUPS["nan_inputs"]())
    log = tmp_path / "reads.log"
    dataset = type(setup.train_loader.dataset)
    monkeypatch.setattr(dataset, "__getitem__", logging_reads(dataset.__getitem__, log))
    rng = torch.get_rng_state()
    ctx = DiagnosisContext(setup)
    parallel = only(list(DataIntegrity().run(ctx)), Severity.CRITICAL)
    coverage = ctx.published["data_integrity_coverage"]["sampling"]
    assert coverage.endswith("; read by the loader's 2 worker processes")
    assert parallel.title == serial.title
    assert parallel.evidence["first_sample_ids"] == serial.evidence["first_sample_ids"]
    reads = reads_in(log)
    assert len({index for _, index in reads}) == len(reads) == 200  # each sampled item once
    assert {pid for pid, _ in reads} - {os.getpid()}, "no item was read by a worker"
    assert torch.equal(torch.get_rng_state(), rng)  # workers are seeded apart from the global RNG


def test_a_dataset_that_fails_in_worker_processes_is_read_here_instead(monkeypatch):
    monkeypatch.setattr(data_integrity, "SCAN_SAMPLES", 200)
    setup = with_workers(USER_SETUPS["nan_inputs"]())
    main = os.getpid()
    dataset = type(setup.train_loader.dataset)
    getitem = dataset.__getitem__

    def here_only(self, index):
        if os.getpid() != main:
            raise RuntimeError("this dataset's file handle cannot cross a fork")
        return getitem(self, index)

    monkeypatch.setattr(dataset, "__getitem__", here_only)
    ctx = DiagnosisContext(setup)
    nan = only(list(DataIntegrity().run(ctx)), Severity.CRITICAL)
    assert nan.title.startswith(f"{nan.evidence['samples']} of 200 scanned samples (of 600)")
    coverage = ctx.published["data_integrity_coverage"]["sampling"]
    assert "read by this process, after the loader's workers failed (RuntimeError" in coverage
