"""`python -m pipeline.device`: prints this machine's device plan and why: precision, XLA, the GPU of each tuning worker
and its memory share. --assume NAME,CC,GiB (repeatable) plans for GPUs not there; --json prints the plan for scripts."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from dataclasses import asdict

from pipeline import params
from pipeline.lib.cli import reports_errors, stage_parser
from pipeline.lib.device import DevicePlan, Gpu, detect, parse_capability, plan_devices, unseen_gpus
from pipeline.params import Precision, choices


def assumed_gpu(text: str) -> Gpu:
    """Return the GPU described by --assume "NAME,CC,GiB", e.g. "Tesla T4,7.5,15"."""
    with contextlib.suppress(ValueError):  # also: fewer than three parts
        name, cc, memory = (part.strip() for part in text.rsplit(",", 2))
        if name and (capability := parse_capability(cc)) != (0, 0) and float(memory) > 0:
            return Gpu(name, capability, float(memory))
    raise argparse.ArgumentTypeError(f"expected NAME,CC,GiB such as 'Tesla T4,7.5,15', got {text!r}")


def report(plan: DevicePlan, assumed: bool) -> str:
    """Return the plan as lines for people: each decision, then why."""
    gpus = [f"  GPU {i}: {gpu.describe()}" for i, gpu in enumerate(plan.gpus)] or ["  no GPU"]
    placed = Counter("the CPU" if w.gpu is None else f"GPU {w.gpu}" for w in plan.tune_workers)
    rows = [
        ("precision", plan.precision, plan.reasons["precision"]),
        ("XLA", "on" if plan.jit_compile else "off", plan.reasons["xla"]),
        ("tune", ", ".join(f"{n} on {where}" for where, n in placed.items()), plan.reasons["tune"]),
        ("train", f"one unit per process, on {'GPU 0' if plan.gpus else 'the CPU'}", "DVC runs them one at a time"),
    ]
    lines = [f"device: {plan.backend} on {'assumed ' * assumed}{plan.where()}", *gpus]
    return "\n".join(lines + [f"{name:<10} {value}\n{'':<10} why: {why}" for name, value, why in rows])


@reports_errors("device")
def main(argv: list[str] | None = None) -> int:
    """Print this machine's plan (or the plan for assumed GPUs) and why; warn about GPUs the backend misses."""
    parser = stage_parser("device", __doc__)
    parser.add_argument("--assume", action="append", type=assumed_gpu, metavar="NAME,CC,GiB", help="plan for this GPU")
    parser.add_argument("--precision", choices=choices(Precision), default=params.load("device").precision)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args, tune = parser.parse_args(argv), params.load("tune")
    hardware = detect(tuple(args.assume) if args.assume else None)
    plan = plan_devices(hardware, args.precision, tune.workers_gpu, tune.workers_cpu)
    gpus = [asdict(g) | {"capability": "{}.{}".format(*g.capability)} for g in plan.gpus]
    print(json.dumps(asdict(plan) | {"gpus": gpus}, indent=2) if args.json else report(plan, bool(args.assume)))
    if not args.assume and (warning := unseen_gpus(hardware)):
        print(f"device: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
