"""Every file and folder the pipeline reads or writes, relative to the project root (the cwd)."""

import os
from pathlib import Path

PARAMS = Path("params.yaml")  # the effective settings, composed from CONF_DIR (never edited by hand)
CONF_DIR = Path("conf")  # Hydra config: config.yaml (every setting) and profile/<name>.yaml
CONF_CONFIG = CONF_DIR / "config.yaml"
PROFILES_DIR = CONF_DIR / "profile"
PROFILE_CHOICE = CONF_DIR / "local" / "profile.yaml"  # this machine's profile (git-ignored; `optional local: profile`)
PARAMS_STAMP = Path(".params.yaml.composed")  # sha256 of the params.yaml last composed by pipeline.params

RAW_DIR = Path("data/raw")
RAW_ZIP = RAW_DIR / "digit-recognizer.zip"
RAW_TRAIN_CSV, RAW_TEST_CSV = RAW_DIR / "train.csv", RAW_DIR / "test.csv"

PROCESSED_DIR = Path("data/processed")
TRAIN_NPZ, TEST_NPZ = PROCESSED_DIR / "train.npz", PROCESSED_DIR / "test.npz"
AUGMENTED_NPZ = PROCESSED_DIR / "augmented.npz"
BEST_PARAMS = PROCESSED_DIR / "best_params.json"
OPTUNA_DB = PROCESSED_DIR / "optuna.db"
SETTINGS_CHECKED = PROCESSED_DIR / "settings_checked.json"  # stage `settings`: every stage's first dependency
EXCLUDE_ROWS = Path("data/exclude_rows.csv")  # git-tracked: training rows left out (pipeline/lib/exclusions.py)

MODELS_DIR = Path("models")
TEST_PROBS_NPZ = MODELS_DIR / "test_probs.npz"
OOF_TTA_NPZ = MODELS_DIR / "oof_tta.npz"  # the submission's model: OOF TTA probabilities, blended

REPORTS_DIR = Path("reports")
AUGMENTATIONS_PNG = REPORTS_DIR / "augmentations.png"
PREDICT_JSON, TUNE_JSON = REPORTS_DIR / "predict.json", REPORTS_DIR / "tune.json"
TUNING_DIR = REPORTS_DIR / "tuning"
TRIALS_CSV = TUNING_DIR / "trials.csv"
MODELS_MD, MODELS_JSON = REPORTS_DIR / "models.md", REPORTS_DIR / "models.json"
BENCH_JSON = REPORTS_DIR / "bench.json"
TIMINGS_DIR = REPORTS_DIR / "timings"  # <stage>.json: wall seconds (a DVC metric: numbers only)
RUNS_DIR = REPORTS_DIR / "runs"  # <stage>.json: the device and finish time of its last run
ESTIMATE_JSON = REPORTS_DIR / "estimate.json"  # python -m pipeline.tools.estimate (make run on a CPU)
SUMMARY_MD = REPORTS_DIR / "summary.md"
CONFUSION_CSV = REPORTS_DIR / "confusion.csv"
WRONG_PNG, TEST_GRID_PNG = REPORTS_DIR / "wrong.png", REPORTS_DIR / "test_grid.png"
LABEL_ISSUES_CSV, LABEL_ISSUES_PNG = REPORTS_DIR / "label_issues.csv", REPORTS_DIR / "label_issues.png"
AUDIT_JSON = REPORTS_DIR / "audit.json"
SUBMISSION_DIFF_JSON, SUBMISSION_DIFF_PNG = REPORTS_DIR / "submission_diff.json", REPORTS_DIR / "submission_diff.png"

SUBMISSIONS_DIR = Path("submissions")
LATEST_SUBMISSION = SUBMISSIONS_DIR / "latest.csv"
KAGGLE_ROOT_ENV = "DIGIT_KAGGLE_ROOT"  # a Kaggle notebook's folders are under /kaggle, or this variable's folder
TUNE_STORAGE_ENV = "DIGIT_TUNE_STORAGE"  # the Optuna storage URL handed to tune's workers, over tune.storage


def model_dir(model: str) -> Path:
    """Return the folder holding member `model`'s fold folders."""
    return MODELS_DIR / "folds" / model


def fold_dir(model: str, fold: int) -> Path:
    """Return the folder of member `model`'s fold `fold` (one DVC output of the train matrix stage)."""
    return model_dir(model) / f"fold{fold}"


def fold_model(model: str, fold: int) -> Path:
    """Return the path of member `model`'s trained fold `fold` model file."""
    return fold_dir(model, fold) / "model.keras"


def fold_meta(model: str, fold: int) -> Path:
    """Return the path of member `model`'s fold `fold` metadata (settings, history, scores, training data) JSON."""
    return fold_dir(model, fold) / "meta.json"


def fold_oof(model: str, fold: int) -> Path:
    """Return the path of member `model`'s fold `fold` out-of-fold probabilities and training record (.npz)."""
    return fold_dir(model, fold) / "oof.npz"


def fold_live_dir(model: str, fold: int) -> Path:
    """Return member `model`'s fold `fold` DVCLive folder (per-epoch metrics)."""
    return REPORTS_DIR / "live" / model / f"fold{fold}"


def fold_checkpoint_dir(model: str, fold: int) -> Path:
    """Return the folder of member `model`'s fold `fold` checkpoint while it trains (not a DVC output)."""
    return MODELS_DIR / "checkpoints" / model / f"fold{fold}"


def stage_timing(stage: str) -> Path:
    """Return the path of the JSON where stage `stage` records its last wall time."""
    return TIMINGS_DIR / f"{stage}.json"


def stage_run(stage: str) -> Path:
    """Return the path of the JSON where stage `stage` records the device and finish time of its last run."""
    return RUNS_DIR / f"{stage}.json"


def kaggle_root() -> Path:
    """Return the root of Kaggle's notebook layout: $DIGIT_KAGGLE_ROOT, else /kaggle."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV) or "/kaggle")


def kaggle_input() -> Path:
    """Return the folder where a Kaggle notebook finds the competition's train.csv and test.csv."""
    return kaggle_root() / "input" / "digit-recognizer"


def kaggle_submission() -> Path:
    """Return the file a Kaggle notebook submits: <root>/working/submission.csv."""
    return kaggle_root() / "working" / "submission.csv"


def tune_storage(url: str | None) -> str:
    """Return the Optuna storage URL: $DIGIT_TUNE_STORAGE, else `url` (tune.storage), else the SQLite file OPTUNA_DB."""
    return os.environ.get(TUNE_STORAGE_ENV) or url or f"sqlite:///{OPTUNA_DB}"
