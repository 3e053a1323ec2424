"""Loads params.yaml, the effective settings exactly as the stages run them, and returns each stage's
settings as frozen dataclasses.

params.yaml is composed by Hydra from conf/config.yaml and a profile (conf/profile/<name>.yaml):
`python -m pipeline.params --profile quick [key=value ...]` writes it (what `make quick` runs) the
same way `dvc exp run -S profile=quick -S key=value` does, and makes NAME the profile a plain
`dvc exp run` composes. A params.yaml that differs from the last composition and from every version
git holds (a hand edit) is never overwritten silently: composing stops, or with --force keeps it as
params.yaml.<time>.bak."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline import paths
from pipeline.cli import fail, stage_parser
from pipeline.files import write_text

T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds an unknown or invalid setting."""


@dataclass(frozen=True)
class IngestParams:
    max_train_rows: int | None
    max_test_rows: int | None
    expected_test_rows: int


@dataclass(frozen=True)
class AugmentParams:
    copies: int
    rotate_deg: float
    scale: float
    shift: float
    chunk_rows: int
    workers: int
    preview_rows: int


@dataclass(frozen=True)
class ModelParams:
    name: str
    ensemble: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def members(self) -> list[str]:
        """Return every model trained and blended: `name` first, then each `ensemble` entry."""
        names = [self.name, *(self.ensemble or [])]
        if len(set(names)) != len(names):
            raise ParamsError(f"params.yaml model: name and ensemble must not repeat a model, got {names}")
        return names

    def overrides_for(self, name: str) -> dict[str, Any]:
        """Return the train settings model `name` overrides (params.yaml model.overrides.<name>), if any."""
        return dict(self.overrides.get(name) or {})


@dataclass(frozen=True)
class FitParams:
    """The settings of one training run (params.yaml `train:`), which tune searches and model.overrides change."""

    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: float
    dropout_conv: float
    dropout_dense: float
    aug_prob: float
    label_smoothing: float


@dataclass(frozen=True)
class TrainParams(FitParams):
    folds: int
    use_tuned: bool
    monitor_rows: int | None


@dataclass(frozen=True)
class TuneParams:
    trials: int
    study_name: str
    storage: str | None
    fold: int
    epochs: int
    max_train_rows: int | None
    max_val_rows: int | None
    pruner: str
    pruner_warmup_epochs: int
    heartbeat_seconds: int
    grace_seconds: int
    max_retries: int
    trials_per_process: int
    workers_cpu: int
    workers_gpu: int
    space: dict[str, Any]
    model_space: dict[str, Any]


@dataclass(frozen=True)
class PredictParams:
    tta_views: int
    batch_size: int
    blend_by: str = "log_loss"
    diff_images: int = 40


@dataclass(frozen=True)
class AuditParams:
    """The label audit (pipeline/audit.py): cleanlab.filter.find_label_issues on the OOF probabilities."""

    filter_by: str
    rank_by: str
    grid_images: int


@dataclass(frozen=True)
class DeviceParams:
    """How the stages that run a model compute (params.yaml `device:`)."""

    precision: str  # auto | float32 | mixed_bfloat16 (pipeline/device.py resolves auto per machine)


@dataclass(frozen=True)
class ReportParams:
    wrong_images: int
    test_images: int
    confusion_pairs: int


@dataclass(frozen=True)
class CompareParams:
    models: list[str]
    folds: list[int]
    epochs: int
    max_train_rows: int | None


SECTIONS: dict[str, type] = {
    "device": DeviceParams,
    "ingest": IngestParams,
    "augment": AugmentParams,
    "model": ModelParams,
    "train": TrainParams,
    "tune": TuneParams,
    "predict": PredictParams,
    "audit": AuditParams,
    "report": ReportParams,
    "compare": CompareParams,
}


def read_raw(path: Path = paths.PARAMS) -> dict[str, Any]:
    """Read params.yaml at `path` and return it as a plain dict."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run from the project root") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return doc


def build(section: str, values: dict[str, Any], cls: type[T]) -> T:
    """Build dataclass `cls` from `values`, naming unknown or missing keys of `section`."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        raise ParamsError(f"params.yaml section {section!r}: unknown keys {unknown}, missing keys {missing}")
    return cls(**values)


def load(section: str, path: Path = paths.PARAMS) -> Any:
    """Return the settings of `section` from params.yaml, exactly as written there, as its frozen dataclass."""
    doc = read_raw(path)
    if section not in doc or not isinstance(doc[section], dict):
        raise ParamsError(f"params.yaml has no section {section!r}")
    return build(section, doc[section], SECTIONS[section])


def seed(path: Path = paths.PARAMS) -> int:
    """Return the global seed from params.yaml."""
    return int(read_raw(path).get("seed", 0))


def profile(path: Path = paths.PARAMS) -> str:
    """Return the name of the profile params.yaml was composed with."""
    return str(read_raw(path).get("profile", "full"))


def profiles(conf: Path = paths.CONF_DIR) -> list[str]:
    """Return the names of the profiles defined in `conf`/profile/*.yaml."""
    return sorted(p.stem for p in (Path(conf) / paths.PROFILES_DIR.name).glob("*.yaml"))


def compose(overrides: list[str], conf: Path = paths.CONF_DIR) -> str:
    """Return the YAML text Hydra composes from `conf`/config.yaml with `overrides` (as `dvc exp run -S`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("profile=")), None)
    if choice is not None and choice not in profiles(conf):
        raise ParamsError(f"unknown profile {choice!r}: choose one of {profiles(conf)} ({Path(conf) / 'profile'}/)")
    try:
        with initialize_config_dir(str(Path(conf).resolve()), version_base=None):
            cfg = hydra_compose(config_name=paths.CONF_CONFIG.stem, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ParamsError(f"cannot compose {Path(conf) / paths.CONF_CONFIG.name} with {overrides}: {exc}") from exc
    return OmegaConf.to_yaml(cfg)


def digest(text: str) -> str:
    """Return the sha256 hex digest of `text` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def known_to_git(path: Path) -> bool:
    """Return whether git holds `path`'s exact content (committed, staged, or recorded by `dvc exp run`)."""
    try:
        blob = subprocess.run(
            ["git", "hash-object", "--", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        return subprocess.run(["git", "cat-file", "-e", blob], capture_output=True).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return False


def disposable(path: Path = paths.PARAMS, stamp: Path = paths.PARAMS_STAMP) -> bool:
    """Return whether params.yaml at `path` may be overwritten: missing, last composed here (`stamp`), or in git."""
    if not Path(path).exists():
        return True
    if Path(stamp).exists() and Path(stamp).read_text().strip() == digest(Path(path).read_text(encoding="utf-8")):
        return True
    return known_to_git(path)


def write_params(
    text: str, force: bool = False, path: Path = paths.PARAMS, stamp: Path = paths.PARAMS_STAMP
) -> Path | None:
    """Write the composed `text` to params.yaml and record its digest; return the backup made of a hand-edited
    params.yaml (only with `force`, else ParamsError), or None."""
    path, backup = Path(path), None
    if path.exists() and path.read_text(encoding="utf-8") != text and not disposable(path, stamp):
        if not force:
            raise ParamsError(
                f"{path} has changes that are neither the last composition nor in git (a hand edit?), so it is left "
                f"as it is. Settings are edited in {paths.CONF_DIR}/ (or passed as key=value overrides); to compose "
                f"anyway and keep this file as {path}.<time>.bak, add --force"
            )
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        write_text(backup, path.read_text(encoding="utf-8"))
    write_text(path, text)
    write_text(stamp, digest(text) + "\n")
    return backup


def set_default_profile(name: str, conf: Path = paths.CONF_DIR) -> None:
    """Make `name` the profile entry of `conf`/config.yaml's defaults list (what a plain `dvc exp run` composes)."""
    config = Path(conf) / paths.CONF_CONFIG.name
    text = config.read_text(encoding="utf-8")
    new, count = re.subn(r"(?m)^(\s*-\s*profile:\s*)\S+", rf"\g<1>{name}", text, count=1)
    if count == 0:
        raise ParamsError(f"{config}: its defaults list has no `- profile: NAME` entry")
    if new != text:
        write_text(config, new)


def main(argv: list[str] | None = None) -> int:
    """Compose params.yaml from conf/ (a profile and overrides), or print the profile it was composed with."""
    parser = stage_parser("params", __doc__)
    parser.add_argument("--profile", help=f"compose this profile ({', '.join(profiles()) or 'conf/profile/*.yaml'})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. train.epochs=10")
    parser.add_argument("--force", action="store_true", help="overwrite a hand-edited params.yaml (kept as .bak)")
    args = parser.parse_args(argv)
    if args.profile or args.overrides:
        overrides = ([f"profile={args.profile}"] if args.profile else []) + list(args.overrides)
        try:
            backup = write_params(compose(overrides), force=args.force)
            if args.profile:
                set_default_profile(args.profile)
        except ParamsError as exc:
            return fail("params", exc)
        if backup:
            print(f"params: your edited params.yaml is kept as {backup}")
        print(f"params: composed {paths.PARAMS} from {paths.CONF_DIR}/ with {' '.join(overrides)}")
    print(f"profile: {profile()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
