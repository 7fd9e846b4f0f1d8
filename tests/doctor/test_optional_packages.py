"""The framework packages are optional: installed next to the pinned torch, never imported by
`import quad_doctor`."""

from __future__ import annotations

import subprocess
import sys

import torch

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def test_import_quad_doctor_imports_no_training_framework():
    code = (
        "import sys, quad_doctor, quad_doctor.cli, quad_doctor.engine; "
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_the_frameworks_sit_next_to_the_pinned_cpu_torch():
    assert torch.__version__ == "2.13.0+cpu"
    for name in ("lightning", "transformers", "accelerate"):
        __import__(name)  # the dev extra installs them (make test)
