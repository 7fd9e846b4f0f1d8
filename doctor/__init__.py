"""quad-doctor: a diagnostic-first training doctor for supervised-contrastive (and other) training.

    import quad_doctor as qd
    report = qd.diagnose(qd.TrainingSetup(model=..., loss_fn=..., optimizer=..., train_loader=...))
"""

from __future__ import annotations

from quad_doctor.trainer.setup import TrainingSetup

__all__ = ["TrainingSetup"]
