"""User-code training setups, each written the way a different user might, for `--setup`.

    quad-doctor diagnose --setup tests/user_scenarios/setups.py:single_class_sampler

Every scenario is a function returning a `quad_doctor.TrainingSetup` over its own small model,
loss, optimizer, schedule and batch sampler (never quad-doctor's trainer), on an in-memory
dataset of activity windows: an 8-channel sensor time series whose frequency depends on the class,
and a 12-feature table row whose means do. `EXPECTED` says what the doctor should rank first for
each scenario of the matrix (None: nothing at warning or above). The setups after it, under
"broken code", fail while the doctor probes them, for its error paths. `SIZE` (samples, env
`QD_SCENARIO_SAMPLES`) lets a benchmark run them bigger.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, Sampler

import quad_doctor as qd

SIZE = int(os.environ.get("QD_SCENARIO_SAMPLES", "600"))
NUM_CLASSES = 6
CHANNELS = 8
WINDOW = 32
FEATURES = 12
BATCH_SIZE = 32
EPOCHS = 5
SEED = 0

# scenario -> (the check the doctor should rank first, the least severity it should give)
EXPECTED: dict[str, tuple[str, str] | None] = {
    "single_class_sampler": ("sampler-class-mix", "critical"),
    "anchors_without_positives": ("sampler-class-mix", "error"),
    "healthy_cross_entropy": None,
    "healthy_supcon": None,
    "frozen_encoders": ("frozen-parameters", "warning"),
    "missing_from_optimizer": ("frozen-parameters", "error"),
    "lr_far_too_high": ("lr-schedule", "error"),
    "lr_far_too_low": ("lr-schedule", "error"),
    "warmup_never_ends": ("lr-schedule", "error"),
    "nan_inputs": ("data-integrity", "critical"),
    "dead_stream": ("data-integrity", "error"),
}


# -- the data ------------------------------------------------------------------------------------


class ActivityWindows(Dataset):
    """`size` samples of `num_classes` activities, balanced, in a seeded random order.

    Each item is {"signal": (8, 32) float, "tabular": (12,) float, "label": int}. `nan_share` of
    the samples get NaNs in their signal; `dead` names a stream that is all zeros everywhere.
    """

    def __init__(
        self,
        size: int = SIZE,
        num_classes: int = NUM_CLASSES,
        seed: int = SEED,
        nan_share: float = 0.0,
        dead: str | None = None,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        labels = (torch.arange(size) % num_classes)[torch.randperm(size, generator=generator)]
        time = torch.arange(WINDOW) / WINDOW
        cycles = 1.0 + labels.float() * (10.0 / num_classes)  # per window, under Nyquist (16)
        phase = torch.rand(size, CHANNELS, 1, generator=generator) * 2 * math.pi
        signal = torch.sin(2 * math.pi * cycles[:, None, None] * time + phase)
        signal += 0.3 * torch.randn(size, CHANNELS, WINDOW, generator=generator)
        class_means = torch.randn(num_classes, FEATURES, generator=generator)
        tabular = class_means[labels] + torch.randn(size, FEATURES, generator=generator)
        if nan_share:
            poisoned = torch.randperm(size, generator=generator)[: round(size * nan_share)]
            signal[poisoned, 0, :4] = float("nan")
        streams = {"signal": signal, "tabular": tabular}
        if dead is not None:
            streams[dead] = torch.zeros_like(streams[dead])
        self.signal, self.tabular = streams["signal"], streams["tabular"]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {
            "signal": self.signal[index],
            "tabular": self.tabular[index],
            "label": int(self.labels[index]),
        }


# -- the models ----------------------------------------------------------------------------------


class SignalEncoder(nn.Module):
    """One strided 1-D convolution over the sensor window, averaged over time, then a projection."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, 32, kernel_size=8, stride=4)
        self.project = nn.Linear(32, width)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        return self.project(F.relu(self.conv(signal)).mean(dim=2))


class TabularEncoder(nn.Module):
    """Two dense layers over the table row."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, width))

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        return self.mlp(tabular)


class TwoStreamNet(nn.Module):
    """Both encoders, concatenated, then a head: logits (B, classes) or an embedding."""

    def __init__(self, out_features: int = NUM_CLASSES) -> None:
        super().__init__()
        self.signal_encoder = SignalEncoder()
        self.tabular_encoder = TabularEncoder()
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, out_features))

    def forward(self, signal: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.signal_encoder(signal), self.tabular_encoder(tabular)], dim=1)
        return self.head(fused)


class FlatMLP(nn.Module):
    """One MLP over both streams flattened side by side: a first baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(CHANNELS * WINDOW + FEATURES, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, signal: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([signal.flatten(1), tabular], dim=1))


class FixedWindowNet(TwoStreamNet):
    """A TwoStreamNet written for 64-sample windows: it refuses the 32-sample ones it gets."""

    expected_window = 64

    def forward(self, signal: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        if signal.shape[-1] != self.expected_window:
            raise ValueError(
                f"expected windows of {self.expected_window} samples, got {signal.shape[-1]}"
            )
        return super().forward(signal, tabular)


# -- the losses ----------------------------------------------------------------------------------


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020) over L2-normalised features.

    Anchors without a positive in the batch are left out of the mean.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features, dim=1)
        logits = features @ features.T / self.temperature
        self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        counts = positives.sum(dim=1)
        has_positive = counts > 0
        per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1)
        return (per_anchor[has_positive] / counts[has_positive]).mean()


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample, kept apart for per-sample weighting (never reduced)."""
    return F.cross_entropy(logits, labels, reduction="none")


# -- the batch samplers --------------------------------------------------------------------------


class ClassBatchSampler(Sampler[list[int]]):
    """Batches cut from each class's shuffled samples (its remainder a smaller batch), in a
    shuffled order of batches.

    The bug: meant to keep classes "balanced", it makes every batch a single class.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for label in torch.unique(self.labels):
            members = torch.nonzero(self.labels == label).flatten()
            members = members[torch.randperm(len(members), generator=generator)].tolist()
            batches += [
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            ]
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


class ChunkBatchSampler(Sampler[list[int]]):
    """Consecutive chunks of a shuffled index list, the last one partial.

    The bug: an off-by-one (`np.arange(size + 1)`) puts one index past the dataset's end.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng(self.seed).permutation(np.arange(self.size + 1))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-(self.size + 1) // self.batch_size)


# -- pieces the scenarios share ------------------------------------------------------------------


def shuffled_loader(dataset: Dataset, batch_size: int = BATCH_SIZE) -> DataLoader:
    """The everyday loader: shuffled, full batches."""
    generator = torch.Generator().manual_seed(SEED)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator
    )


def stratified_loader(dataset: ActivityWindows, batch_size: int = BATCH_SIZE) -> DataLoader:
    """Every class in every batch, through quad-doctor's sampler."""
    sampler = qd.StratifiedBatchSampler(dataset.labels, batch_size, seed=SEED)
    return DataLoader(dataset, batch_sampler=sampler)


def cosine_schedule(total_steps: int) -> Callable[[torch.optim.Optimizer], LRScheduler]:
    """A scheduler factory: cosine decay over the run, stepped every batch."""

    def build(optimizer: torch.optim.Optimizer) -> LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    return build


def cross_entropy_setup(
    model_class: type[nn.Module],
    lr: float,
    loss_fn: Callable | None = None,
    data: ActivityWindows | None = None,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
) -> qd.TrainingSetup:
    """A `model_class` classifier trained with `loss_fn` (default cross-entropy) and `optimizer`
    at `lr` on shuffled batches of `data` (default: the healthy windows)."""
    torch.manual_seed(SEED)
    model = model_class()
    return qd.TrainingSetup(
        model=model,
        loss_fn=loss_fn or nn.CrossEntropyLoss(),
        optimizer=optimizer(model.parameters(), lr=lr),
        train_loader=shuffled_loader(data or ActivityWindows()),
        epochs=EPOCHS,
    )


# -- the matrix ----------------------------------------------------------------------------------


def single_class_sampler() -> qd.TrainingSetup:
    """SupCon over batches from the user's own class-grouped sampler: every batch one class."""
    torch.manual_seed(SEED)
    dataset = ActivityWindows()
    model = TwoStreamNet(out_features=32)
    return qd.TrainingSetup(
        model=model,
        loss_fn=SupConLoss(temperature=0.1),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4),
        train_loader=DataLoader(dataset, batch_sampler=ClassBatchSampler(dataset.labels, 32)),
        labels=dataset.labels,
        epochs=EPOCHS,
    )


def anchors_without_positives() -> qd.TrainingSetup:
    """SupCon over 60 fine-grained classes with random batches of 16: most anchors are alone."""
    torch.manual_seed(SEED)
    dataset = ActivityWindows(num_classes=60)
    model = TwoStreamNet(out_features=32)
    return qd.TrainingSetup(
        model=model,
        loss_fn=SupConLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        train_loader=shuffled_loader(dataset, batch_size=16),
        epochs=EPOCHS,
        class_names=[f"gesture-{c}" for c in range(60)],
    )


def healthy_cross_entropy() -> qd.TrainingSetup:
    """A flat MLP classifier: cross-entropy, shuffled batches, AdamW and a cosine schedule."""
    torch.manual_seed(SEED)
    train = ActivityWindows()
    loader = DataLoader(train, batch_size=32, shuffle=True)
    model = FlatMLP()
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        train_loader=loader,
        scheduler=cosine_schedule(EPOCHS * len(loader)),
        epochs=EPOCHS,
        val_loader=DataLoader(ActivityWindows(size=max(SIZE // 5, 60), seed=1), batch_size=64),
        class_names=["walk", "run", "sit", "stand", "climb", "cycle"],
    )


def healthy_supcon() -> qd.TrainingSetup:
    """SupCon on two encoders with quad-doctor's stratified batches and a cosine schedule."""
    torch.manual_seed(SEED)
    dataset = ActivityWindows()
    loader = stratified_loader(dataset)
    model = TwoStreamNet(out_features=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    return qd.TrainingSetup(
        model=model,
        loss_fn=SupConLoss(temperature=0.1),
        optimizer=optimizer,
        train_loader=loader,
        labels=dataset.labels,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS),
        scheduler_interval="epoch",
        epochs=EPOCHS,
    )


def frozen_encoders() -> qd.TrainingSetup:
    """Both encoders frozen (meant for pretrained ones, but these are random); only the head
    trains, and the optimizer holds just what requires grad."""
    torch.manual_seed(SEED)
    model = TwoStreamNet()
    for encoder in (model.signal_encoder, model.tabular_encoder):
        encoder.requires_grad_(False)
    model.head = nn.Linear(64, NUM_CLASSES)  # a linear probe, small beside the encoders
    trainable = [p for p in model.parameters() if p.requires_grad]
    loader = shuffled_loader(ActivityWindows())
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(trainable, lr=1e-3),
        train_loader=loader,
        epochs=EPOCHS,
    )


def missing_from_optimizer() -> qd.TrainingSetup:
    """A new classification head swapped in after the optimizer was built over the old one."""
    torch.manual_seed(SEED)
    model = TwoStreamNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        train_loader=shuffled_loader(ActivityWindows()),
        epochs=EPOCHS,
    )


def lr_far_too_high() -> qd.TrainingSetup:
    """Adam at lr=10: every step rewrites the weights."""
    return cross_entropy_setup(TwoStreamNet, lr=10.0)


def lr_far_too_low() -> qd.TrainingSetup:
    """Adam at lr=1e-9: the weights cannot move."""
    return cross_entropy_setup(TwoStreamNet, lr=1e-9)


def warmup_never_ends() -> qd.TrainingSetup:
    """A linear warm-up whose ratio was written as a percentage (20, meant 0.2): a hundred times
    the intended length, twenty times the whole run."""
    torch.manual_seed(SEED)
    loader = shuffled_loader(ActivityWindows())
    total_steps = EPOCHS * len(loader)
    warmup_ratio = 20  # percent, read as a fraction of the run
    warmup_steps = int(total_steps * warmup_ratio)

    def linear_warmup(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup_steps)
        )

    model = TwoStreamNet()
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        train_loader=loader,
        scheduler=linear_warmup,
        scheduler_interval="step",
        epochs=EPOCHS,
    )


def nan_inputs() -> qd.TrainingSetup:
    """2 % of the samples carry NaN in their sensor window (dropped packets)."""
    return cross_entropy_setup(
        TwoStreamNet, 1e-3, data=ActivityWindows(nan_share=0.02), optimizer=torch.optim.AdamW
    )


def dead_stream() -> qd.TrainingSetup:
    """The table features were never joined in: the tabular stream is all zeros."""
    return cross_entropy_setup(
        TwoStreamNet, 1e-3, data=ActivityWindows(dead="tabular"), optimizer=torch.optim.AdamW
    )


def forward_raises() -> qd.TrainingSetup:
    """The model was written for 64-sample windows and raises on the 32-sample ones."""
    return cross_entropy_setup(FixedWindowNet, lr=1e-3)


def loss_not_scalar() -> qd.TrainingSetup:
    """The loss returns one value per sample instead of their mean."""
    return cross_entropy_setup(TwoStreamNet, lr=1e-3, loss_fn=per_sample_cross_entropy)


def sampler_out_of_range() -> qd.TrainingSetup:
    """The user's batch sampler yields an index one past the dataset's end."""
    torch.manual_seed(SEED)
    dataset = ActivityWindows()
    model = TwoStreamNet()
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        train_loader=DataLoader(dataset, batch_sampler=ChunkBatchSampler(len(dataset), 32)),
        epochs=EPOCHS,
    )
