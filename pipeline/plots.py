"""PNG reports (matplotlib, headless): the augmentation grid and other image grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.files import write_with  # noqa: E402


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
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"copy {c}", fontsize=8)
    fig.suptitle("Training images (left) and their augmented copies", fontsize=10)
    save_figure(fig, path)
