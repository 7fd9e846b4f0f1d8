"""Train HAR-4M with SupCon, watched by quad-doctor's live doctor.

python -m src.train --config configs/base.toml [--epochs N] [--lr LR] [--save PATH]
                    [--sampler NAME] [--doctor-dir DIR] [--stop-on SEVERITY] [--no-doctor]
"""

from __future__ import annotations

import argparse
import time

import torch

import quad_doctor

from .build import SAMPLERS, build_training, resolve_device
from .config import DEFAULT_CONFIG, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="TOML config")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--lr", type=float, help="override train.lr")
    parser.add_argument("--save", help="write the trained weights here")
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), help="override train.sampler")
    parser.add_argument(
        "--doctor-dir", help="where quad-doctor writes its events and reports (runs/<timestamp>)"
    )
    parser.add_argument(
        "--stop-on",
        default="critical",
        help="stop at the first quad-doctor finding this bad (critical, error, warning, never)",
    )
    parser.add_argument("--no-doctor", action="store_true", help="train unwatched")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config(args.config)
    if args.epochs is not None:
        config["train"]["epochs"] = args.epochs
    if args.lr is not None:
        config["train"]["lr"] = args.lr
    if args.sampler is not None:
        config["train"]["sampler"] = args.sampler

    run = build_training(config)
    device = resolve_device(config["train"]["device"])
    model = run.model.to(device)
    print(
        f"train {len(run.train_set)} clips, val {len(run.val_set)} clips, "
        f"{len(run.train_loader)} steps/epoch, device {device}"
    )

    watch = None
    if not args.no_doctor:
        watch = quad_doctor.Watch(
            model,
            run.optimizer,
            loss_fn=run.criterion,
            train_loader=run.train_loader,
            run_dir=args.doctor_dir,
            stop_on=args.stop_on,
            num_epochs=config["train"]["epochs"],
            class_names=run.train_set.classes,
        )
        print(f"quad-doctor watching: {watch.run_dir}")

    stopped = False
    for epoch in range(config["train"]["epochs"]):
        run.train_loader.batch_sampler.set_epoch(epoch)
        model.train()
        total, steps, started = 0.0, 0, time.perf_counter()
        for batch in run.train_loader:
            labels = batch.pop("label").to(device)
            inputs = {name: x.to(device, non_blocking=True) for name, x in batch.items()}

            features = model(**inputs)
            loss = run.criterion(features, labels)

            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if watch is not None and watch.step(
                loss, labels, outputs=features, inputs=inputs, epoch=epoch
            ):
                stopped = True  # the doctor found what makes this run pointless
                break
            run.optimizer.step()
            run.scheduler.step()  # per step: the warm-up is counted in steps

            total += loss.item()
            steps += 1

        if stopped:
            break
        lr = run.optimizer.param_groups[0]["lr"]
        print(
            f"epoch {epoch + 1}/{config['train']['epochs']}  loss {total / steps:.4f}  "
            f"lr {lr:.2e}  {time.perf_counter() - started:.1f}s"
        )

    if watch is not None:
        report = watch.close()
        if stopped:
            print(f"stopped by quad-doctor: {watch.stop_reason}")
        worst = report.findings[0].finding if report.findings else None
        print(
            f"quad-doctor: {'no findings' if worst is None else f'{worst.severity} {worst.check}'}"
            f"; quad-doctor report --run-dir {watch.run_dir}"
        )

    if args.save:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
