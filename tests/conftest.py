from __future__ import annotations

import numpy as np
import pytest

from quad_doctor.trainer.config import SyntheticConfig
from quad_doctor.trainer.synthetic import write_dataset

# Small enough that an epoch is a dozen steps; big enough for every class in every split.
SMALL_SAMPLES = 240


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the embedded dataset cache inside the test session, never in the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUAD_DOCTOR_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A 240-sample synthetic dataset on disk, written once per test session."""
    return write_dataset(
        SyntheticConfig(num_samples=SMALL_SAMPLES), tmp_path_factory.mktemp("d") / "data"
    )


@pytest.fixture
def small_overrides(small_dataset):
    """`--set` arguments that train quickly on the small dataset."""
    return [
        f"data.path={str(small_dataset)!r}".replace("'", '"'),
        "train.batch_size=16",
        "train.num_epochs=2",
        "train.warmup_epochs=1",
    ]


@pytest.fixture
def truncated_dataset(tmp_path, small_dataset):
    """A copy of the small dataset whose sensor.npy is three rows short of the manifest."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in small_dataset.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    sensor = np.load(broken / "sensor.npy")
    np.save(broken / "sensor.npy", sensor[:-3])
    return broken
