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

from collections.abc import Sequence
from typing import TYPE_CHECKING

from quad_doctor.trainer.errors import QuadDoctorError, SetupError
from quad_doctor.trainer.samplers import StratifiedBatchSampler
from quad_doctor.trainer.setup import TrainingSetup

if TYPE_CHECKING:
    from quad_doctor.findings import Report
    from quad_doctor.watch import Watch

__all__ = [
    "QuadDoctorError",
    "SetupError",
    "StratifiedBatchSampler",
    "TrainingSetup",
    "Watch",
    "diagnose",
]


def __getattr__(name: str) -> object:
    # the live doctor's plain-loop API loads the checks and rules: only when asked for
    if name == "Watch":
        from quad_doctor.watch import Watch

        return Watch
    raise AttributeError(f"module 'quad_doctor' has no attribute {name!r}")


def diagnose(
    setup: TrainingSetup,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    verify: bool = True,
) -> Report:
    """Run the ordered checks on your training setup and return the ranked report.

    `only`/`skip` take check names (see `quad-doctor checks`); `verify` tries each remedy on a
    copy of the setup. Nothing of yours is changed: model, optimizer, scheduler, sampler, RNG.
    The report renders itself in a notebook; `report.save_json`, `report.save_html` and
    `report.passed(fail_on="error")` do the rest.
    """
    from quad_doctor.engine import diagnose as run_diagnosis

    if not isinstance(setup, TrainingSetup):
        raise SetupError(
            f"diagnose: expected a quad_doctor.TrainingSetup, got {type(setup).__name__}"
        )
    return run_diagnosis(setup, only, skip, verify_remedies=verify)
