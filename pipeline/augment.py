"""Stage `augment`: reads data/processed/train.npz and writes `augment.copies` albumentations
copies of every training image to data/processed/augmented.npz (x, source row, copy number),
plus reports/augmentations.png showing originals beside their copies."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.files import OutputError, read_npz, require, write_npz
from pipeline.params import AugmentParams

_HELPER: dict = {}  # in a helper process: the job folder and its input and output (set by `start_helper`)


def worker_count(cfg: AugmentParams) -> int:
    """Return the number of worker processes: `cfg.workers`, or one per core when 0."""
    return cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)


def augment_into(out: np.ndarray, images: np.ndarray, cfg: AugmentParams, seed: int, index: int) -> int:
    """Write the copies of chunk `index` of `images` into its rows of `out` (seeded by `index` alone); return its
    image count."""
    from pipeline.lib.transforms import (  # here: a helper that gets no chunk skips albumentations
        augment_chunk,
        chunk_seed,
    )

    rows = images[index * cfg.chunk_rows : (index + 1) * cfg.chunk_rows]
    start = index * cfg.chunk_rows * cfg.copies
    out[start : start + len(rows) * cfg.copies] = augment_chunk(rows, cfg.copies, cfg, chunk_seed(seed, index))
    return len(rows)


def claim(folder: Path, index: int) -> bool:
    """Take chunk `index` by creating its file in `folder`/claims (atomic); return False if it is already taken
    or the job is over (the parent renames the claims folder when every chunk is in)."""
    try:
        os.close(os.open(folder / "claims" / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except (FileExistsError, FileNotFoundError):
        return False
    return True


def start_helper(folder: str) -> None:
    """Keep the job's folder in this helper process (the pool's initializer)."""
    _HELPER.clear()
    _HELPER["folder"] = Path(folder)


def helper_chunk(cfg: AugmentParams, seed: int, index: int) -> int:
    """In a helper: augment chunk `index` into the shared output unless already taken; return its image count."""
    folder = _HELPER["folder"]
    if not claim(folder, index):
        return 0
    if "out" not in _HELPER:  # opened on the first chunk taken: the parent waits for every chunk a helper takes
        _HELPER.update(
            images=np.load(folder / "images.npy", mmap_mode="r"), out=np.load(folder / "copies.npy", mmap_mode="r+")
        )
    return augment_into(_HELPER["out"], _HELPER["images"], cfg, seed, index)


def remove_stale_folders(folder: Path = paths.TMP_DIR, prefix: str = "augment-") -> list[Path]:
    """Delete the job folders `folder`/<prefix><pid>-* of processes that no longer run (a killed run's images and
    memory-mapped copies); return them."""
    stale = []
    for path in sorted(Path(folder).glob(f"{prefix}*")) if Path(folder).is_dir() else []:
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not process_runs(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale


def process_runs(pid: int) -> bool:
    """Return whether a process with id `pid` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def augment_shared(images: np.ndarray, out: np.ndarray, cfg: AugmentParams, seed: int, helpers: int, bar) -> None:
    """Fill `out` with every chunk's copies, this process and `helpers` spawned ones working together.

    The helpers are handed every chunk from the first on; this process takes chunks from the last one down,
    from the start (so the helpers' start-up costs no time), until it meets one a helper has taken. Input
    and output pass through memory-mapped files, so no image array is pickled through a pipe, and nothing
    waits for the helpers to exit. The files live in the project (data/processed/tmp/augment-<pid>-*), never in the
    system's temporary folder, and a run removes those a killed run left."""
    n_chunks = -(-len(images) // cfg.chunk_rows)
    remove_stale_folders()
    paths.TMP_DIR.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        job = tempfile.TemporaryDirectory(
            prefix=f"augment-{os.getpid()}-", dir=paths.TMP_DIR.resolve(), ignore_cleanup_errors=True
        )
        folder = Path(stack.enter_context(job))
        (folder / "claims").mkdir()
        np.save(folder / "images.npy", images)
        shared = np.lib.format.open_memmap(folder / "copies.npy", "w+", np.uint8, out.shape)
        stack.callback(os.rename, folder / "claims", folder / "closed")  # no chunk can be taken after this
        pool = ProcessPoolExecutor(helpers, get_context("spawn"), initializer=start_helper, initargs=(str(folder),))
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)  # the helpers exit in the background
        pending = {k: pool.submit(helper_chunk, cfg, seed, k) for k in range(n_chunks)}

        def collect(wait: bool) -> None:
            """Copy the helpers' finished chunks (all of them with `wait`) into `out` and forget their tasks."""
            for index in [k for k, task in pending.items() if wait or task.done()]:
                count = pending.pop(index).result()
                start = index * cfg.chunk_rows * cfg.copies
                out[start : start + count * cfg.copies] = shared[start : start + count * cfg.copies]
                bar.update(count)

        for index in reversed(range(n_chunks)):
            if not claim(folder, index):
                break
            del pending[index]  # its task will find the chunk taken: nothing to wait for
            bar.update(augment_into(out, images, cfg, seed, index))
            collect(wait=False)
        collect(wait=True)


def augment(
    images: np.ndarray, cfg: AugmentParams, seed: int, workers: int = 1, show_progress: bool = False
) -> dict[str, np.ndarray]:
    """Return augmented copies of `images` with their source rows; identical for any worker count, since
    chunk k (`cfg.chunk_rows` rows) always gets seed chunk_seed(seed, k), whichever process augments it.
    With `show_progress`, a progress bar counts the images done, one chunk at a time."""
    n_chunks = -(-len(images) // cfg.chunk_rows)
    x = np.empty((len(images) * cfg.copies, *images.shape[1:]), np.uint8)
    bar = progress.progress(len(images), "augment", unit="img") if show_progress else progress.silent(len(images))
    with bar:
        if min(workers, n_chunks) > 1:
            augment_shared(images, x, cfg, seed, min(workers, n_chunks) - 1, bar)
        else:
            for index in range(n_chunks):
                bar.update(augment_into(x, images, cfg, seed, index))
    source = np.repeat(np.arange(len(images), dtype=np.int32), cfg.copies)
    copy = np.tile(np.arange(cfg.copies, dtype=np.int8), len(images))
    return {"x": x, "source": source, "copy": copy}


@reports_errors("augment")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, augment the training images, and write the copies and the preview grid."""
    from pipeline.lib import plots  # here, not at the top: spawned helpers import this module and need no matplotlib

    parser = stage_parser("augment", __doc__)
    cfg = params.load("augment")
    parser.add_argument("--workers", type=int, default=cfg.workers, help="processes (0 = one per core)")
    args = parser.parse_args(argv)
    cfg = AugmentParams(**{**cfg.__dict__, "workers": args.workers})
    start = time.perf_counter()
    train = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    workers = worker_count(cfg)
    out = augment(train["x"], cfg, params.seed(), workers, show_progress=True)
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
