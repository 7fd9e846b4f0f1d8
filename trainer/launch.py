"""Starting distributed training: `quad-doctor train --nproc-per-node N` runs torchrun on itself.

The settings are checked here, in one process, before any worker starts, so an impossible one is a
one-line error (exit 2) rather than N tracebacks from the workers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist

from quad_doctor.trainer.build import build_dataset, resolve_device
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.errors import UsageError


def check_world(config: Config, world_size: int) -> None:
    """Refuse settings no run can have: a backend the machine lacks, more processes than CUDA
    devices or than batches, a rank left without data."""
    nproc = config.dist.nproc_per_node
    device = resolve_device(config.train.device)
    if device.type == "cuda":
        if not dist.is_nccl_available():
            raise UsageError("dist: CUDA training needs the nccl backend, missing in this torch")
        if nproc > torch.cuda.device_count():
            raise UsageError(
                f"dist.nproc_per_node: {nproc} processes but {torch.cuda.device_count()} CUDA "
                "device(s) on this machine"
            )
    elif not dist.is_gloo_available():
        raise UsageError("dist: CPU training needs the gloo backend, missing in this torch build")
    dataset = build_dataset(config)
    train_rows = int((dataset.manifest.splits == "train").sum())
    batches = train_rows // config.train.batch_size
    if batches < world_size:
        raise UsageError(
            f"dist.nproc_per_node: {world_size} processes but the {train_rows} training samples "
            f"make only {batches} batch(es) of train.batch_size {config.train.batch_size} per "
            "epoch: a rank would get no data; use fewer processes or a smaller batch"
        )


def launch_command(config: Config, nnodes: int, rdzv_endpoint: str | None) -> list[str]:
    """`python -m torch.distributed.run ... -m quad_doctor.cli` for this config (arguments of
    `train` to be appended). One node: standalone rendezvous; several: c10d at the endpoint."""
    if nnodes > 1 and rdzv_endpoint is None:
        raise UsageError("--nnodes: a multi-node run needs --rdzv-endpoint HOST:PORT")
    check_world(config, config.dist.nproc_per_node * nnodes)
    command = [sys.executable, "-m", "torch.distributed.run"]
    if rdzv_endpoint is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
        ]
    return command + [f"--nproc-per-node={config.dist.nproc_per_node}", "-m", "quad_doctor.cli"]


def run_workers(command: list[str], nproc: int) -> int:
    """Run torchrun and wait; its exit status is the command's (1 also when a worker failed)."""
    env = dict(os.environ)
    # torchrun would set 1 with a warning; share this machine's cores between the workers instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        return subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 130
