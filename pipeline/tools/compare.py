"""`python -m pipeline.tools.compare`: trains each model of the zoo on the same folds, rows and budget (params.yaml
`compare:`, with train's settings and each model's `model.overrides`) and writes reports/models.md and
reports/models.json: OOF accuracy and loss, parameters, multiply-adds per image, seconds per epoch here, the published
accuracy, and the OOF blend. `--published` instead trains each model at its published recipe (RECIPES) on every
training row of the compared folds, its augmentation made offline (`compare.published_copies` copies per image, one
drawn per image each epoch), and reports the held-out accuracy beside the published figure at the epochs the source
gives one; `--max-epochs N` shortens every recipe. Reads data/processed/train.npz and augmented.npz when present."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from pipeline import params, paths
from pipeline.lib.cli import StageError, fail, reports_errors, stage_parser
from pipeline.lib.device import DevicePlan, clear_session, configure
from pipeline.lib.ensemble import choose_weights, cross_fitted_blend, cross_fitted_weights, ensemble_report
from pipeline.lib.files import OutputError, write_json, write_text
from pipeline.lib.fitting import EpochSampler, fit, predict_probs
from pipeline.lib.members import FitSettings, member_settings
from pipeline.lib.metrics import scores
from pipeline.lib.models import PUBLISHED, multiply_adds
from pipeline.lib.training_data import Augmented, TrainingData, no_copies, read_training_data
from pipeline.params import MODEL_NAMES, AugmentParams, CompareParams, ModelParams, TrainParams

REPRODUCED_WITHIN = 0.003  # a held-out accuracy this close to the published figure (or above it) reproduces it


@dataclass(frozen=True)
class Recipe:
    """How a model's source trained it (train settings of the same names); `published_at`: (epoch, accuracy) pairs."""

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
    "cnn_basic": Recipe(10, 250, "Adam 1e-3, batch 250, 3 and 10 epochs", published_at=((3, 0.9857), (10, 0.99))),
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
    """Return `base` (its dropout rates) trained as `recipe` says for at most `max_epochs`, no warmup or smoothing."""
    same = ("batch_size", "learning_rate", "optimizer", "schedule", "lr_decay", "plateau_patience", "ema_momentum")
    return replace(
        base, **{k: getattr(recipe, k) for k in same}, epochs=min(recipe.epochs, max_epochs or recipe.epochs),
        warmup_epochs=0.0, aug_prob=1.0 if recipe.augments() else 0.0, label_smoothing=0.0,
    )  # fmt: skip


def recipe_copies(images: np.ndarray, recipe: Recipe, cfg: AugmentParams, copies: int, seed: int) -> Augmented:
    """Return `copies` copies of every image under `recipe`'s transform (none when it does not augment)."""
    if not recipe.augments():
        return no_copies(images)
    from pipeline.lib.transforms import augment, worker_count

    spec = replace(cfg, copies=copies, rotate_deg=recipe.rotate_deg, scale=recipe.scale, shift=recipe.shift)
    made = augment(images, spec, seed, worker_count(spec))
    return Augmented(made["x"], made["source"])


def published_figures(recipe: Recipe, held_out_by_epoch: list[float]) -> list[dict]:
    """Return each figure the source publishes beside ours after that epoch (None if not trained so long), the gap."""
    out = []
    for epoch, figure in recipe.published_at:
        ours = held_out_by_epoch[epoch - 1] if epoch <= len(held_out_by_epoch) else None
        gap = None if ours is None else ours - figure
        out.append({"epoch": epoch, "published": figure, "ours": ours, "gap": gap,
                    "reproduced": None if gap is None else gap >= -REPRODUCED_WITHIN})  # fmt: skip
    return out


def check_compare(cfg: CompareParams, n_folds: int) -> None:
    """Raise StageError unless every compared model is a model of the zoo and every fold one of train.npz's."""
    unknown = [name for name in cfg.models if name not in MODEL_NAMES]
    if unknown or not cfg.models:
        raise StageError(f"compare.models: {unknown or 'none'}: expected models of the zoo ({', '.join(MODEL_NAMES)})")
    bad = [f for f in cfg.folds if f >= n_folds]
    if bad or not cfg.folds:
        raise StageError(f"compare.folds {bad or 'none'}: expected folds of train.npz (it holds 0-{n_folds - 1})")


def split_rows(folds: np.ndarray, labels: np.ndarray, fold: int, max_rows: int | None,
               seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Return (training rows, held-out rows) of `fold`, training rows stratified-subsampled to `max_rows`."""
    val, train = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
    if max_rows and max_rows < len(train):
        train = np.sort(train_test_split(train, train_size=max_rows, stratify=labels[train], random_state=seed)[0])
    return train, val


def compare_model(settings: FitSettings, data: TrainingData, cfg: CompareParams, seed: int,
                  device: DevicePlan | None = None) -> tuple[dict, np.ndarray]:  # fmt: skip
    """Train `settings.model` on each compared fold; return its report row and OOF probabilities (fold order)."""
    probs, labels, seconds, train_rows, curves = [], [], [], [], []
    for fold in cfg.folds:
        rows, val_rows = split_rows(data.fold, data.y, fold, cfg.max_train_rows, seed + fold)
        keras.utils.set_random_seed(seed + fold)
        sampler = EpochSampler(data.x, data.y, rows, data.aug.x, data.aug.source, seed + 1000 * fold)
        start = time.perf_counter()
        model, history = fit(settings, sampler, (data.x[val_rows], data.y[val_rows]), device)
        seconds.append((time.perf_counter() - start) / settings.epochs)
        probs.append(predict_probs(model, data.x[val_rows]))
        labels.append(data.y[val_rows])
        curves.append([row["val_accuracy"] for row in history])
        train_rows.append(len(rows))
        count, madds = model.count_params(), multiply_adds(model)
        clear_session()
    oof, y = np.concatenate(probs), np.concatenate(labels)
    sizes = np.asarray([len(part) for part in labels], np.float64)
    measured = scores(oof, y)
    return {
        "model": settings.model, "oof_accuracy": measured["accuracy"], "oof_loss": measured["loss"],
        "params": count, "multiply_adds": madds, "seconds_per_epoch": float(np.median(seconds)),
        # held-out accuracy over every compared fold's rows after each epoch (the averaged weights' with use_ema)
        "held_out_by_epoch": (sizes @ np.asarray(curves) / sizes.sum()).tolist(),
        "epochs": settings.epochs, "folds": list(cfg.folds), "train_rows": train_rows, "val_rows": len(y),
        "published": PUBLISHED[settings.model], "settings": asdict(settings),
    }, oof  # fmt: skip


def compare(train: TrainParams, model: ModelParams, data: TrainingData, cfg: CompareParams, seed: int,
            device: DevicePlan | None = None, published: AugmentParams | None = None, max_epochs: int | None = None,
            log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Return the rows and OOF blend of every compared model trained on the same folds and budget (`published`:
    augment's settings, each at its recipe on every training row)."""
    check_compare(cfg, data.n_folds)
    cfg = cfg if published is None else replace(cfg, max_train_rows=None)
    rows, oofs, pools = [], [], {}
    for name in cfg.models:
        start = time.perf_counter()
        settings, run = replace(member_settings(train, model, name), epochs=cfg.epochs), data
        if published is not None:
            recipe = RECIPES[name]
            key = (recipe.rotate_deg, recipe.scale, recipe.shift)
            if key not in pools:
                pools[key] = recipe_copies(data.x, recipe, published, cfg.published_copies, seed)
            settings, run = recipe_settings(settings, recipe, max_epochs), replace(data, aug=pools[key])
        row, oof = compare_model(settings, run, cfg, seed, device)
        if published is not None:
            row.update(recipe=asdict(recipe), figures=published_figures(recipe, row["held_out_by_epoch"]))
        rows.append(row)
        oofs.append(oof)
        log(f"compare: {name}{' at its published recipe' if published else ''} ({settings.epochs} epochs): OOF "
            f"accuracy {row['oof_accuracy']:.4f}, {row['params']:,} parameters, {row['seconds_per_epoch']:.1f} "
            f"s/epoch; published {PUBLISHED[name]} ({time.perf_counter() - start:.0f}s)")  # fmt: skip
    mode = "budget" if published is None else "published"
    return {"mode": mode, "rows": rows, "blend": blend_report(oofs, data, cfg.folds)}


def blend_report(oofs: list[np.ndarray], data: TrainingData, folds: list[int]) -> dict | None:
    """Return the log-loss-weighted blend of `oofs` (None for one), in-sample and with 2+ folds also cross-fitted."""
    if len(oofs) < 2:
        return None
    labels = np.concatenate([data.y[data.fold == f] for f in folds])
    fold_ids = np.concatenate([np.full(int(np.sum(data.fold == f)), f) for f in folds])
    report = ensemble_report(oofs, labels, choose_weights(oofs, labels, "log_loss"))
    if len(folds) > 1:
        honest = cross_fitted_blend(oofs, fold_ids, cross_fitted_weights(oofs, labels, fold_ids))
        report["cross_fitted"] = scores(honest, labels)
    return report


def percent(value: float | None) -> str:
    """Return an accuracy as a percentage with two decimals, or "-" when there is none."""
    return "-" if value is None else f"{100 * value:.2f}%"


def published_lines(row: dict) -> list[str]:
    """Return a model's lines of the `--published` table: one per published figure, ours beside it."""
    out = []
    for i, f in enumerate(row["figures"] or [dict.fromkeys(("epoch", "published", "ours", "gap", "reproduced"))]):
        head = ["", "", "", ""] if i else [row["model"], row["recipe"]["source"], str(row["epochs"]),
                                           percent(row["oof_accuracy"])]  # fmt: skip
        gap = "-" if f["gap"] is None else f"{100 * f['gap']:+.2f}"
        verdict = "-" if f["reproduced"] is None else ("yes" if f["reproduced"] else "**no**")
        tail = [percent(f["published"]), str(f["epoch"] or "-"), percent(f["ours"]), gap, verdict]
        out.append("| " + " | ".join([*head, *tail, f"{row['seconds_per_epoch']:.1f}"]) + " |")
    return out


def markdown(result: dict, device: str) -> str:
    """Return reports/models.md: a row per model (`--published`: per published figure, ours beside it), the blend."""
    first, blend = result["rows"][0], result["blend"]
    folds, train_rows = ", ".join(map(str, first["folds"])), "/".join(map(str, first["train_rows"]))
    if result["mode"] == "published":
        lines = [
            "# The zoo at its published recipes", "",
            f"Held-out folds {folds} ({first['val_rows']} rows), each model trained on every row of the other folds "
            f"({train_rows}) as its source trains it; {device}. The sources score other test sets (MNIST's, Kaggle's "
            f"leaderboard), so a figure within {100 * REPRODUCED_WITHIN:.1f} points (or above) counts as reproduced.",
            "",
            "| model | recipe | epochs | held-out accuracy | published | after epoch | ours then | gap (points) "
            "| reproduced | s/epoch |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
            *(line for r in result["rows"] for line in published_lines(r)),
        ]  # fmt: skip
    else:
        lines = [
            "# Model zoo comparison", "",
            f"Same folds ({folds}), {first['epochs']} epochs each, {train_rows} training rows per fold, OOF accuracy "
            f"over {first['val_rows']} held-out rows; {device}. Seconds per epoch: a fold's training time over its "
            "epochs (sampling, scoring the held-out fold and compiling included), the median over folds.",
            "",
            "| model | OOF accuracy | OOF log loss | parameters | M multiply-adds/image | s/epoch | published |",
            "|---|---:|---:|---:|---:|---:|---|",
            *(f"| {r['model']} | {r['oof_accuracy']:.4f} | {r['oof_loss']:.4f} | {r['params']:,} | "
              f"{r['multiply_adds'] / 1e6:.1f} | {r['seconds_per_epoch']:.1f} | {r['published']} |"
              for r in result["rows"]),
        ]  # fmt: skip
    if blend:
        weights = ", ".join(f"{r['model']} {w:.2f}" for r, w in zip(result["rows"], blend["weights"], strict=True))
        lines += ["", f"OOF log-loss-weighted blend ({weights}): accuracy {blend['blend']['accuracy']:.4f}, log loss "
                  f"{blend['blend']['loss']:.4f} (weights fitted on these same OOF rows, so optimistic)"]  # fmt: skip
        if "cross_fitted" in blend:
            lines[-1] += (
                f"; cross-fitted (each fold's rows blended with weights chosen on the other folds'): accuracy "
                f"{blend['cross_fitted']['accuracy']:.4f}, log loss {blend['cross_fitted']['loss']:.4f}"
            )
        lines[-1] += "."
    return "\n".join(lines) + "\n"


@reports_errors("compare")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, train the compared models, and write reports/models.{md,json}."""
    cfg = params.load("compare")
    parser = stage_parser("compare", __doc__)
    parser.add_argument("--models", nargs="+", default=cfg.models, help="models to compare (default from params.yaml)")
    parser.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs per model and fold")
    parser.add_argument("--published", action="store_true", help="train each model at its published recipe")
    parser.add_argument("--max-epochs", type=int, help="with --published: at most this many epochs per recipe")
    args = parser.parse_args(argv)
    if args.epochs < 1 or (args.max_epochs or 1) < 1:
        parser.error("--epochs and --max-epochs must be at least 1")
    cfg, device = replace(cfg, models=args.models, epochs=args.epochs), configure(params.load("device").precision)
    upto = f", at most {args.max_epochs} epochs" if args.max_epochs else ""
    how = f"at their published recipes{upto}" if args.published else f"{cfg.epochs} epochs"
    print(f"compare: {', '.join(cfg.models)} on folds {cfg.folds}, {how}, on {device.describe()}")
    augment, data = params.load("augment") if args.published else None, read_training_data(copies_required=False)
    result = compare(params.load("train"), params.load("model"), data, cfg, params.seed(), device, augment,
                     args.max_epochs)  # fmt: skip
    try:
        write_json(paths.MODELS_JSON, {**result, "device": device.describe()})
        write_text(paths.MODELS_MD, markdown(result, device.describe()))
    except OutputError as exc:
        return fail("compare", exc)
    print(f"compare: -> {paths.MODELS_MD}, {paths.MODELS_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
