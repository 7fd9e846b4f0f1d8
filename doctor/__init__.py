"""quad-doctor: a diagnostic-first training doctor, for its own quadmodal trainer and for yours.

import quad_doctor as qd

report = qd.diagnose(qd.TrainingSetup(model=model, loss_fn=loss_fn, optimizer=optimizer,
                                      train_loader=train_loader))
report.passed()              # False when a finding is at error or above
report.save_html("doctor.html")

watch = qd.Watch(model, optimizer, loss_fn=loss_fn, stop_on="critical")  # the live doctor
...                          # in the loop, after loss.backward(): watch.step(loss, labels, ...)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from quad_doctor.trainer.errors import QuadDoctorError, SetupError

if TYPE_CHECKING:
    from quad_doctor.findings import Report
    from quad_doctor.trainer.samplers import StratifiedBatchSampler
    from quad_doctor.trainer.setup import TrainingSetup
    from quad_doctor.watch import Watch

__all__ = [
    "QuadDoctorError",
    "SetupError",
    "StratifiedBatchSampler",
    "TrainingSetup",
    "Watch",
    "diagnose",
]
# Public names whose modules import torch, loaded when first asked for: `import quad_doctor`
# (and so every `quad-doctor` command, `--help` included) does not pay torch's second.
_LAZY = {
    "StratifiedBatchSampler": "quad_doctor.trainer.samplers",
    "TrainingSetup": "quad_doctor.trainer.setup",
    "Watch": "quad_doctor.watch",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'quad_doctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def diagnose(
    setup: TrainingSetup,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    verify: bool = True,
    full_scan: bool = False,
) -> Report:
    """Run the ordered checks on your training setup and return the ranked report.

    `only`/`skip` take check names (see `quad-doctor checks`); `verify` tries each remedy on a
    copy of the setup; `full_scan` reads every item of your dataset instead of a sample bounded
    by work (data-integrity states what its sample covered). Nothing of yours is changed: model,
    optimizer, scheduler, sampler, RNG.
    The report renders itself in a notebook; `report.save_json`, `report.save_html` and
    `report.passed(fail_on="error")` do the rest.
    """
    from quad_doctor.engine import diagnose as run_diagnosis
    from quad_doctor.trainer.setup import TrainingSetup

    if not isinstance(setup, TrainingSetup):
        raise SetupError(
            f"diagnose: expected a quad_doctor.TrainingSetup, got {type(setup).__name__}"
        )
    return run_diagnosis(setup, only, skip, verify_remedies=verify, full_scan=full_scan)
