"""Stage `augment`: reads data/processed/train.npz and writes `augment.copies` albumentations copies of every
training image to data/processed/augmented.npz (x, source row, copy number), plus reports/augmentations.png showing
originals beside their copies; the copies do not depend on the number of worker processes."""

from __future__ import annotations

import sys
import time

from pipeline import params, paths
from pipeline.lib import plots, progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.files import OutputError, read_npz, require, write_npz
from pipeline.lib.transforms import augment, worker_count
from pipeline.params import AugmentParams


@reports_errors("augment")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, augment the training images, and write the copies and the preview grid."""
    parser = stage_parser("augment", __doc__)
    cfg = params.load("augment")
    parser.add_argument("--workers", type=int, default=cfg.workers, help="processes (0 = one per core)")
    args = parser.parse_args(argv)
    cfg = AugmentParams(**{**cfg.__dict__, "workers": args.workers})
    start = time.perf_counter()
    train = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    workers = worker_count(cfg)
    with progress.progress(len(train["x"]), "augment", unit="img") as bar:
        out = augment(train["x"], cfg, params.seed(), workers, bar)
    try:
        write_npz(paths.AUGMENTED_NPZ, **out)
        plots.augmentation_grid(train["x"], out, cfg.preview_rows, paths.AUGMENTATIONS_PNG)
    except OutputError as exc:
        return fail("augment", exc)
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
