"""PNG reports (matplotlib, headless): the augmentation grid and other image grids. The Agg backend is chosen before
matplotlib is imported (MPLBACKEND), so a caller's backend that cannot load (a notebook kernel's inline one, a
matplotlibrc's) never matters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if "matplotlib" not in sys.modules:  # imported already (a notebook's): matplotlib.use below switches it
    os.environ["MPLBACKEND"] = "agg"
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.lib.files import write_with


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write `fig` to the PNG `path` atomically and close it."""
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), suffix=".png")
    plt.close(fig)


def augmentation_grid(originals: np.ndarray, augmented: dict[str, np.ndarray], rows: int, path: Path) -> None:
    """Draw `rows` originals (first column) beside their augmented copies and save the grid to `path`."""
    copies = int(augmented["copy"].max()) + 1 if len(augmented["copy"]) else 0
    rows = min(rows, len(originals))
    fig, axes = plt.subplots(rows, copies + 1, figsize=(1.3 * (copies + 1), 1.3 * rows), squeeze=False)
    for r in range(rows):
        images = [originals[r], *augmented["x"][augmented["source"] == r]]
        for c, ax in enumerate(axes[r]):
            ax.imshow(images[c], cmap="gray_r", vmin=0, vmax=255)
            ax.set(xticks=[], yticks=[])
            if r == 0:
                ax.set_title("original" if c == 0 else f"copy {c}", fontsize=8)
    fig.suptitle("Training images (left) and their augmented copies", fontsize=10)
    save_figure(fig, path)


def image_grid(
    images: np.ndarray, captions: list[str], path: Path, title: str, color: str = "black", empty: str = ""
) -> None:
    """Draw uint8 `images` (n, 28, 28), 8 a row, captioned, under `title` (`empty` without images); save to `path`."""
    n = len(images)
    cols = max(1, min(8, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.65 * rows + 0.5), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel()[:n], images, captions, strict=True):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255)
        ax.set(xticks=[], yticks=[])
        ax.set_title(caption, fontsize=8, color=color)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=12)
    fig.suptitle(empty if empty and not n else title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def wrong_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """Save the grid of misclassified `images` captioned `true T → pred P (probability)` to `path`."""
    captions = [f"true {t} → pred {p}\n({c:.0%} sure)" for t, p, c in zip(labels, predicted, probs, strict=True)]
    title = f"The {len(images)} most confidently wrong out-of-fold predictions (true label → predicted label)"
    image_grid(images, captions, path, title, "firebrick", "No out-of-fold prediction is wrong")


def prediction_grid(images: np.ndarray, ids: np.ndarray, predicted: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """Save the grid of test `images` captioned `#ImageId → P (probability)` to `path`."""
    captions = [f"#{i} → {p}\n({c:.0%} sure)" for i, p, c in zip(ids, predicted, probs, strict=True)]
    span = f" {ids[0]}-{ids[-1]}" if len(ids) else ""
    image_grid(images, captions, path, f"Test images{span}: ImageId → predicted label")


def label_issue_grid(
    images: np.ndarray, rows: np.ndarray, given: np.ndarray, suggested: np.ndarray, quality: np.ndarray, path: Path
) -> None:
    """Save the grid of likely label issues captioned `given G → S` over `row R, p=Q` (label quality) to `path`."""
    captions = [
        f"given {g} → {s}\nrow {r}, p={q:.2g}" for r, g, s, q in zip(rows, given, suggested, quality, strict=True)
    ]
    title = (
        f"The {len(images)} most likely label issues (cleanlab): given label → suggested label\n"
        "row = training row (0-based), p = out-of-fold probability of the given label"
    )
    image_grid(images, captions, path, title, "darkblue", "cleanlab found no likely label issue")


def submission_diff_grid(
    images: np.ndarray, ids: np.ndarray, old: np.ndarray, new: np.ndarray, probs: np.ndarray, path: Path, title: str
) -> None:
    """Save the grid of test `images` whose label changed, captioned `#ImageId old → new (probability)`, to `path`."""
    captions = [f"#{i}: {o} → {n}\n({c:.0%} sure)" for i, o, n, c in zip(ids, old, new, probs, strict=True)]
    image_grid(images, captions, path, title, "darkgreen")
