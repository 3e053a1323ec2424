"""`python -m pipeline.tools.compare`: trains each model of the zoo on the same folds, rows and budget
(params.yaml `compare:`, with train's batch size, schedule and augmentation mix, and each model's
`model.overrides`), and writes reports/models.md and reports/models.json: OOF accuracy and loss,
parameter count, multiply-adds per image, seconds per epoch on this machine, and the accuracy each
model is published with.

`--published` instead trains each model at its published recipe (RECIPES: optimizer, epochs, batch,
learning-rate schedule, weight averaging, augmentation) on every training row of the compared folds,
and reports the held-out accuracy beside the published figure at the epochs the source gives one.
The recipes' augmentation is applied as the pipeline does it, offline: `compare.published_copies`
copies of every image under the recipe's transform, one of them drawn in place of each image every
epoch (the sources draw a fresh transform every epoch). `--max-epochs N` shortens every recipe.

Reads data/processed/train.npz (its folds) and data/processed/augmented.npz when present."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from pipeline import augment, params, paths
from pipeline.device import DevicePlan, clear_session, configure
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.ensemble import choose_weights, cross_fitted_blend, cross_fitted_weights, ensemble_report
from pipeline.lib.files import OutputError, write_json, write_text
from pipeline.lib.fitting import EpochSampler, FitSettings, accuracy, fit, log_loss, predict_probs
from pipeline.lib.models import PUBLISHED, base_name, check_name, multiply_adds
from pipeline.lib.training_data import Augmented, TrainingData, no_copies, read_training_data
from pipeline.params import AugmentParams, CompareParams
from pipeline.train import fit_settings, settings_for

REPRODUCED_WITHIN = 0.003  # a held-out accuracy this close to the published figure (or above it) reproduces it


@dataclass(frozen=True)
class Recipe:
    """How a model's source trained it (train settings of the same names), and the held-out accuracy it reports
    after given epochs (`published_at`: (epoch, accuracy) pairs; none when the source gives no figure)."""

    epochs: int
    batch_size: int
    source: str
    optimizer: str = "adam"
    learning_rate: float = 0.001
    schedule: str = "constant"
    lr_decay: float = 0.95
    plateau_patience: int = 3
    ema_momentum: float | None = None
    rotate_deg: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    published_at: tuple[tuple[int, float], ...] = ()

    def augments(self) -> bool:
        """Return whether the recipe trains on transformed images."""
        return bool(self.rotate_deg or self.scale or self.shift)


AFFINE_10 = {"rotate_deg": 10.0, "scale": 0.1, "shift": 0.1}  # Keras ImageDataGenerator(10, zoom 0.1, shifts 0.1)
AN_ET_AL = Recipe(
    epochs=150, batch_size=120, schedule="exponential", lr_decay=0.98, ema_momentum=0.999, rotate_deg=20.0, shift=0.2,
    source="An et al. 2020 (arXiv:2008.10400; their train.py): Adam 1e-3 x 0.98 per epoch, batch 120, 150 epochs, "
    "weight average (EMA) 0.999, rotation 20 deg and translation 0.2; the paper scores majority votes of such models",
)  # fmt: skip
# The published recipe of every model of the zoo (issue 16's table; bn_plain*: An et al.'s code).
RECIPES: dict[str, Recipe] = {
    "mlp": Recipe(25, 32, "Adam 1e-3, 25 epochs (Keras' default batch 32)", published_at=((25, 0.9736),)),
    "cnn_basic": Recipe(
        10, 250, "Adam 1e-3, batch 250, 3 and 10 epochs", published_at=((3, 0.9857), (10, 0.99))
    ),
    "cnn_small2x2": Recipe(10, 32, "Adam lr 0.01, 10 epochs (Keras' default batch 32)", learning_rate=0.01),
    "dropout_cnn": Recipe(
        30, 86, "RMSprop 1e-3, batch 86, 30 epochs, learning rate halved after 3 epochs without a better validation "
        "accuracy (floor 1e-5), rotation 10 / zoom 0.1 / shift 0.1; public LB 99.5-99.67%",
        optimizer="rmsprop", schedule="plateau", lr_decay=0.5, plateau_patience=3, published_at=((30, 0.995),),
        **AFFINE_10,
    ),
    "bn_cnn": Recipe(
        45, 64, "Adam 1e-3 x 0.95 per epoch, batch 64, 45 epochs, rotation 10 / zoom 0.1 / shift 0.1",
        schedule="exponential", lr_decay=0.95, published_at=((45, 0.9964),), **AFFINE_10,
    ),
    "bn_lite": Recipe(
        45, 64, "bn_cnn's recipe (bn_lite has no published figure of its own): Adam 1e-3 x 0.95 per epoch, batch 64, "
        "45 epochs, rotation 10 / zoom 0.1 / shift 0.1",
        schedule="exponential", lr_decay=0.95, **AFFINE_10,
    ),
    "bn_plain3": AN_ET_AL,
    "bn_plain5": AN_ET_AL,
    "bn_plain7": AN_ET_AL,
}  # fmt: skip


def recipe_settings(base: FitSettings, recipe: Recipe, max_epochs: int | None = None) -> FitSettings:
    """Return `base` (the model's own settings: its dropout rates) trained as `recipe` says, for at most
    `max_epochs`: no warmup or label smoothing, and every image replaced by a transformed copy each epoch when
    the recipe augments."""
    return replace(
        base,
        epochs=min(recipe.epochs, max_epochs or recipe.epochs),
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        warmup_epochs=0.0,
        aug_prob=1.0 if recipe.augments() else 0.0,
        label_smoothing=0.0,
        optimizer=recipe.optimizer,
        schedule=recipe.schedule,
        lr_decay=recipe.lr_decay,
        plateau_patience=recipe.plateau_patience,
        ema_momentum=recipe.ema_momentum,
    )


def recipe_copies(images: np.ndarray, recipe: Recipe, cfg: AugmentParams, copies: int, seed: int) -> Augmented:
    """Return `copies` copies of every image under `recipe`'s transform with their source rows (none when the
    recipe does not augment), made by the augment stage's code with `cfg`'s chunking and workers."""
    if not recipe.augments():
        return no_copies(images)
    spec = replace(cfg, copies=copies, rotate_deg=recipe.rotate_deg, scale=recipe.scale, shift=recipe.shift)
    made = augment.augment(images, spec, seed, augment.worker_count(spec))
    return Augmented(made["x"], made["source"])


def published_figures(recipe: Recipe, held_out_by_epoch: list[float]) -> list[dict]:
    """Return, for each figure the source publishes, ours after the same epoch (None when not trained that long),
    the gap in accuracy (ours - published) and whether it reproduces it (REPRODUCED_WITHIN)."""
    out = []
    for epoch, figure in recipe.published_at:
        ours = held_out_by_epoch[epoch - 1] if epoch <= len(held_out_by_epoch) else None
        gap = None if ours is None else ours - figure
        out.append(
            {
                "epoch": epoch,
                "published": figure,
                "ours": ours,
                "gap": gap,
                "reproduced": None if gap is None else gap >= -REPRODUCED_WITHIN,
            }
        )
    return out


def check_compare(cfg: CompareParams, n_folds: int) -> None:
    """Raise ValueError unless every model exists and every fold is one of the `n_folds` in train.npz."""
    for name in cfg.models:
        check_name(name)
        if name != base_name(name):
            raise ValueError(
                f"compare.models: {name!r} is a seed member (model.ensemble); compare runs each model once"
            )
    if not cfg.models or not cfg.folds:
        raise ValueError("compare.models and compare.folds must each name at least one entry")
    bad = [f for f in cfg.folds if not 0 <= f < n_folds]
    if bad:
        raise ValueError(f"compare.folds {bad} are not folds of train.npz (it holds folds 0-{n_folds - 1})")
    if cfg.epochs < 1:
        raise ValueError(f"compare.epochs must be at least 1, got {cfg.epochs}")


def split_rows(
    folds: np.ndarray, labels: np.ndarray, fold: int, max_rows: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (training rows, held-out rows) of `fold`, training rows stratified-subsampled to `max_rows`."""
    val = np.flatnonzero(folds == fold)
    train = np.flatnonzero(folds != fold)
    if max_rows and max_rows < len(train):
        train, _ = train_test_split(train, train_size=max_rows, stratify=labels[train], random_state=seed)
        train = np.sort(train)
    return train, val


def compare_model(
    settings: FitSettings, data: TrainingData, cfg: CompareParams, seed: int, device: DevicePlan | None = None
) -> tuple[dict, np.ndarray]:
    """Train `settings.model` on each compared fold; return its report row and OOF probabilities (fold order)."""
    probs, labels, seconds, train_rows, curves = [], [], [], [], []
    count = madds = 0
    for fold in cfg.folds:
        rows, val_rows = split_rows(data.fold, data.y, fold, cfg.max_train_rows, seed + fold)
        keras.utils.set_random_seed(seed + fold)
        sampler = EpochSampler(data.x, data.y, rows, data.aug.x, data.aug.source, seed + 1000 * fold)
        val = (data.x[val_rows], data.y[val_rows])
        model, history = fit(settings, sampler, val, device)
        probs.append(predict_probs(model, val[0]))
        labels.append(val[1])
        seconds += [row["seconds"] for row in history]
        curves.append([row["val_accuracy"] for row in history])
        train_rows.append(len(rows))
        count, madds = model.count_params(), multiply_adds(model)
        clear_session()
    oof, y = np.concatenate(probs), np.concatenate(labels)
    sizes = np.asarray([len(part) for part in labels], np.float64)
    row = {
        "model": settings.model,
        "oof_accuracy": accuracy(oof, y),
        "oof_loss": log_loss(oof, y),
        "params": count,
        "multiply_adds": madds,
        "seconds_per_epoch": float(np.median(seconds)),
        # held-out accuracy over every compared fold's rows after each epoch (the averaged weights' with use_ema)
        "held_out_by_epoch": (sizes @ np.asarray(curves) / sizes.sum()).tolist(),
        "epochs": settings.epochs,
        "folds": list(cfg.folds),
        "train_rows": train_rows,
        "val_rows": len(y),
        "published": PUBLISHED[settings.model],
        "settings": asdict(settings),
    }
    return row, oof


def compare(
    base: FitSettings,
    data: TrainingData,
    cfg: CompareParams,
    overrides: dict[str, dict],
    seed: int,
    device: DevicePlan | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train every model of `cfg.models` with the same folds, rows and budget; return the rows and an OOF blend."""
    check_compare(cfg, data.n_folds)
    rows, oofs = [], []
    for name in cfg.models:
        start = time.perf_counter()
        settings = replace(settings_for(base, name, overrides), epochs=cfg.epochs)
        row, oof = compare_model(settings, data, cfg, seed, device)
        rows.append(row)
        oofs.append(oof)
        log(
            f"compare: {name}: OOF accuracy {row['oof_accuracy']:.4f}, {row['params']:,} parameters, "
            f"{row['seconds_per_epoch']:.1f} s/epoch ({time.perf_counter() - start:.0f}s)"
        )
    return {"mode": "budget", "rows": rows, "blend": blend_report(oofs, data, cfg.folds)}


def compare_published(
    base: FitSettings,
    data: TrainingData,
    cfg: CompareParams,
    overrides: dict[str, dict],
    seed: int,
    augment_cfg: AugmentParams,
    max_epochs: int | None = None,
    device: DevicePlan | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train every model of `cfg.models` at its published recipe (RECIPES, at most `max_epochs` epochs) on every
    training row of the compared folds; return the rows, each with the published figures beside ours, and an
    OOF blend."""
    check_compare(cfg, data.n_folds)
    cfg = replace(cfg, max_train_rows=None)
    rows, oofs, pools = [], [], {}
    for name in cfg.models:
        start = time.perf_counter()
        recipe = RECIPES[name]
        transform = (recipe.rotate_deg, recipe.scale, recipe.shift)
        if transform not in pools:
            pools[transform] = recipe_copies(data.x, recipe, augment_cfg, cfg.published_copies, seed)
        settings = recipe_settings(settings_for(base, name, overrides), recipe, max_epochs)
        row, oof = compare_model(settings, replace(data, aug=pools[transform]), cfg, seed, device)
        row.update(recipe=asdict(recipe), figures=published_figures(recipe, row["held_out_by_epoch"]))
        rows.append(row)
        oofs.append(oof)
        log(
            f"compare: {name} at its published recipe ({settings.epochs} epochs): held-out accuracy "
            f"{row['oof_accuracy']:.4f}; published {PUBLISHED[name]} ({time.perf_counter() - start:.0f}s)"
        )
    return {"mode": "published", "rows": rows, "blend": blend_report(oofs, data, cfg.folds)}


def blend_report(oofs: list[np.ndarray], data: TrainingData, folds: list[int]) -> dict | None:
    """Return the OOF log-loss-weighted blend of the compared models' OOF probabilities `oofs` (in `folds`
    order), None for one model: in-sample, and with two or more folds also cross-fitted (each fold's rows
    blended with weights chosen on the other compared folds' rows)."""
    if len(oofs) < 2:
        return None
    labels = np.concatenate([data.y[data.fold == f] for f in folds])
    fold_ids = np.concatenate([np.full(int(np.sum(data.fold == f)), f) for f in folds])
    report = ensemble_report(oofs, labels, choose_weights(oofs, labels, "log_loss"))
    if len(folds) > 1:
        honest = cross_fitted_blend(oofs, fold_ids, cross_fitted_weights(oofs, labels, fold_ids))
        report["cross_fitted"] = {"accuracy": accuracy(honest, labels), "loss": log_loss(honest, labels)}
    return report


def markdown(result: dict, device: str) -> str:
    """Return reports/models.md: one table row per model, then the OOF-weighted blend."""
    rows = result["rows"]
    first = rows[0]
    lines = [
        "# Model zoo comparison",
        "",
        f"Same folds ({', '.join(map(str, first['folds']))}), {first['epochs']} epochs each, "
        f"{'/'.join(map(str, first['train_rows']))} training rows per fold, OOF accuracy over {first['val_rows']} "
        f"held-out rows; {device}. Seconds per epoch include sampling and scoring the held-out fold (median).",
        "",
        "| model | OOF accuracy | OOF log loss | parameters | M multiply-adds/image | s/epoch | published |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['model']} | {r['oof_accuracy']:.4f} | {r['oof_loss']:.4f} | {r['params']:,} | "
        f"{r['multiply_adds'] / 1e6:.1f} | {r['seconds_per_epoch']:.1f} | {r['published']} |"
        for r in rows
    ]
    return "\n".join(lines + blend_lines(result)) + "\n"


def blend_lines(result: dict) -> list[str]:
    """Return the markdown lines on the OOF blend of the compared models (none for one model)."""
    blend = result["blend"]
    if not blend:
        return []
    weights = ", ".join(f"{r['model']} {w:.2f}" for r, w in zip(result["rows"], blend["weights"], strict=True))
    line = (
        f"OOF log-loss-weighted blend ({weights}): accuracy {blend['blend']['accuracy']:.4f}, log loss "
        f"{blend['blend']['loss']:.4f} (weights fitted on these same OOF rows, so optimistic)"
    )
    if "cross_fitted" in blend:
        line += (
            f"; cross-fitted (each fold's rows blended with weights chosen on the other folds'): accuracy "
            f"{blend['cross_fitted']['accuracy']:.4f}, log loss {blend['cross_fitted']['loss']:.4f}"
        )
    return ["", line + "."]


def percent(value: float | None) -> str:
    """Return an accuracy as a percentage with two decimals, or "-" when there is none."""
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown_published(result: dict, device: str) -> str:
    """Return reports/models.md for `--published`: each model at its recipe, ours beside the published figure."""
    rows = result["rows"]
    first = rows[0]
    lines = [
        "# The zoo at its published recipes",
        "",
        f"Held-out folds {', '.join(map(str, first['folds']))} ({first['val_rows']} rows), each model trained on "
        f"every row of the other folds ({'/'.join(map(str, first['train_rows']))}) as its source trains it; "
        f"{device}. The sources score other test sets (MNIST's, Kaggle's leaderboard), so a figure within "
        f"{100 * REPRODUCED_WITHIN:.1f} points (or above) counts as reproduced.",
        "",
        "| model | recipe | epochs | held-out accuracy | published | after epoch | ours then | gap (points) "
        "| reproduced | s/epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        figures = r["figures"] or [{"epoch": None, "published": None, "ours": None, "gap": None, "reproduced": None}]
        for i, f in enumerate(figures):
            head = [r["model"], r["recipe"]["source"], str(r["epochs"]), f"{100 * r['oof_accuracy']:.2f}%"]
            if i:
                head = ["", "", "", ""]
            gap = "-" if f["gap"] is None else f"{100 * f['gap']:+.2f}"
            verdict = "-" if f["reproduced"] is None else ("yes" if f["reproduced"] else "**no**")
            tail = [percent(f["published"]), str(f["epoch"] or "-"), percent(f["ours"]), gap, verdict]
            lines.append("| " + " | ".join([*head, *tail, f"{r['seconds_per_epoch']:.1f}"]) + " |")
    return "\n".join(lines + blend_lines(result)) + "\n"


@reports_errors("compare")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, train the compared models, and write reports/models.{md,json}."""
    cfg = params.load("compare")
    parser = stage_parser("compare", __doc__)
    parser.add_argument("--models", nargs="+", default=cfg.models, help="models to compare (default from params.yaml)")
    parser.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs per model and fold")
    parser.add_argument(
        "--published", action="store_true", help="train each model at its published recipe, on every training row"
    )
    parser.add_argument("--max-epochs", type=int, help="with --published: at most this many epochs per recipe")
    args = parser.parse_args(argv)
    cfg = replace(cfg, models=args.models, epochs=args.epochs)
    model_cfg = params.load("model")
    base = fit_settings(params.load("train"), model_cfg.name, None)
    device = configure(params.load("device").precision)
    data = read_training_data(copies_required=False)
    if args.published:
        return main_published(base, data, cfg, model_cfg.overrides, device, args.max_epochs)
    print(f"compare: {', '.join(cfg.models)} on folds {cfg.folds}, {cfg.epochs} epochs, on {device.describe()}")
    try:
        result = compare(base, data, cfg, model_cfg.overrides, params.seed(), device)
        write_json(paths.MODELS_JSON, {**result, "device": device.describe()})
        write_text(paths.MODELS_MD, markdown(result, device.describe()))
    except (OutputError, ValueError) as exc:
        return fail("compare", exc)
    print(f"compare: -> {paths.MODELS_MD}, {paths.MODELS_JSON}")
    return 0


def main_published(
    base: FitSettings,
    data: TrainingData,
    cfg: CompareParams,
    overrides: dict,
    device: DevicePlan,
    max_epochs: int | None,
) -> int:
    """Train the compared models at their published recipes and write reports/models.{md,json}."""
    shortened = f", at most {max_epochs} epochs each" if max_epochs else ""
    print(f"compare: {', '.join(cfg.models)} at their published recipes on folds {cfg.folds}{shortened}")
    try:
        result = compare_published(
            base, data, cfg, overrides, params.seed(), params.load("augment"), max_epochs, device
        )
        write_json(paths.MODELS_JSON, {**result, "device": device.describe()})
        write_text(paths.MODELS_MD, markdown_published(result, device.describe()))
    except (OutputError, ValueError) as exc:
        return fail("compare", exc)
    print(f"compare: -> {paths.MODELS_MD}, {paths.MODELS_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
