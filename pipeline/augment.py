"""Stage `augment`: reads data/processed/train.npz and writes `augment.copies` albumentations
copies of every training image to data/processed/augmented.npz (x, source row, copy number),
plus reports/augmentations.png showing originals beside their copies."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context

import numpy as np

from pipeline import params, paths, plots, progress
from pipeline.files import OutputError, read_npz, write_npz
from pipeline.params import AugmentParams
from pipeline.transforms import augment_chunk, chunk_seed


def worker_count(cfg: AugmentParams) -> int:
    """Return the number of worker processes: `cfg.workers`, or one per core when 0."""
    return cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)


def augment(
    images: np.ndarray, cfg: AugmentParams, seed: int, workers: int = 1, show_progress: bool = False
) -> dict[str, np.ndarray]:
    """Return augmented copies of `images` with their source rows; identical for any worker count.
    With `show_progress`, a progress bar counts the images done, one chunk at a time."""
    starts = list(range(0, len(images), cfg.chunk_rows))
    chunks = [images[s : s + cfg.chunk_rows] for s in starts]
    seeds = [chunk_seed(seed, i) for i in range(len(chunks))]
    args = (augment_chunk, chunks, [cfg.copies] * len(chunks), [cfg] * len(chunks), seeds)
    with ExitStack() as stack:
        if workers > 1 and len(chunks) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(chunks)), mp_context=get_context("spawn")))
            results = pool.map(*args)
        else:
            results = map(*args)
        total = len(images)
        bar = progress.progress(total, "augment", unit="img") if show_progress else progress.silent(total)
        stack.enter_context(bar)
        parts = []
        for chunk, part in zip(chunks, results, strict=True):
            parts.append(part)
            bar.update(len(chunk))
    x = np.concatenate(parts) if parts else np.empty((0, *images.shape[1:]), np.uint8)
    source = np.repeat(np.arange(len(images), dtype=np.int32), cfg.copies)
    copy = np.tile(np.arange(cfg.copies, dtype=np.int8), len(images))
    return {"x": x, "source": source, "copy": copy}


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, augment the training images, and write the copies and the preview grid."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.augment", description=__doc__)
    cfg = params.load("augment")
    parser.add_argument("--workers", type=int, default=cfg.workers, help="processes (0 = one per core)")
    args = parser.parse_args(argv)
    cfg = AugmentParams(**{**cfg.__dict__, "workers": args.workers})
    start = time.perf_counter()
    train = read_npz(paths.TRAIN_NPZ)
    workers = worker_count(cfg)
    out = augment(train["x"], cfg, params.seed(), workers, show_progress=True)
    try:
        write_npz(paths.AUGMENTED_NPZ, **out)
        plots.augmentation_grid(train["x"], out, cfg.preview_rows, paths.AUGMENTATIONS_PNG)
    except OutputError as exc:
        print(f"augment: error: {exc}", file=sys.stderr)
        return 2
    progress.finish(
        "augment",
        start,
        f"CPU, {workers} workers",
        f"{len(out['x'])} copies of {len(train['x'])} images ({cfg.copies} each) "
        f"-> {paths.AUGMENTED_NPZ}, {paths.AUGMENTATIONS_PNG}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
