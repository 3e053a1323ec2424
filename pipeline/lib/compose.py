"""Composes params.yaml from conf/ with Hydra, as `dvc exp run` does (`derived:` by the resolver registered here and
by hydra_plugins/), and never overwrites silently a hand edit (neither the last composition nor in git)."""

from __future__ import annotations

import subprocess
import time
from hashlib import sha256
from pathlib import Path
from typing import Any

import yaml

from pipeline import params, paths
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.files import write_text
from pipeline.params import ParamsError, checked, yaml_error

RESOLVER = "digit_derived"  # conf/config.yaml: derived: ${digit_derived:${train},${model}}


def derived_of(train: dict, model: dict) -> dict:
    """Return lib/members.derived of `train` and `model`; raise ParamsError naming the first bad value, so that neither
    `python -m pipeline.params` nor `dvc exp run -S` composes train units that are not the settings' (under `dvc exp
    run` a stage set changed by a bad value would have DVC remove the units it no longer names)."""
    from pipeline.lib.members import derived  # lib/members builds on the schema too
    from pipeline.params import build, check_model

    checked = build("model", model, paths.PARAMS)
    check_model(checked)
    return derived(build("train", train, paths.PARAMS), checked)


def resolve_derived(train: Any, model: Any) -> Any:
    """Return `derived_of` the composed `train` and `model` nodes as an OmegaConf node (the resolver of `derived:`)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(derived_of(*(OmegaConf.to_container(node, resolve=True) for node in (train, model))))


def register_resolvers() -> None:
    """Register the resolver of `derived:` with OmegaConf (again: the same function)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, resolve_derived, replace=True)


def profiles(conf: Path = paths.CONF_DIR) -> list[str]:
    """Return the names of the profiles defined in `conf`/profile/*.yaml."""
    return sorted(p.stem for p in (Path(conf) / paths.PROFILES_DIR.name).glob("*.yaml"))


def marked_file(exc: yaml.YAMLError, default: Path) -> Path:
    """Return the file PyYAML's error `exc` is about (relative to the cwd when inside it), else `default`."""
    mark = getattr(exc, "problem_mark", None)
    name = Path(mark.name) if mark and mark.name and not mark.name.startswith("<") else Path(default)
    try:
        return name.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return name


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
    register_resolvers()
    try:
        with initialize_config_dir(str(Path(conf).resolve()), version_base=None):
            cfg = hydra_compose(config_name=paths.CONF_CONFIG.stem, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except yaml.YAMLError as exc:  # a file of conf/ that is not YAML: Hydra passes PyYAML's error on
        raise ParamsError(yaml_error(marked_file(exc, Path(conf) / paths.CONF_CONFIG.name), exc)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        cause = exc
        while cause is not None and not isinstance(cause, ParamsError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # a bad value, named while `derived:` was resolved
            raise ParamsError(str(cause)) from None
        raise ParamsError(f"cannot compose {Path(conf) / paths.CONF_CONFIG.name} with {overrides}: {exc}") from exc
    return OmegaConf.to_yaml(cfg)


def composed(overrides: list[str], conf: Path = paths.CONF_DIR) -> str:
    """Return `compose`'s text, validated before anything is written (not after DVC removed outputs)."""
    try:
        text = compose(overrides, conf)
        checked(text, paths.PARAMS)
    except ParamsError as exc:
        raise ParamsError(f"{exc} (composed with {' '.join(overrides)}; {paths.PARAMS} is left as it was)") from None
    return text


def disposable(path: Path = paths.PARAMS) -> bool:
    """Return whether params.yaml may be overwritten: missing, last composed here (digest in the stamp), or in git."""
    stamp = paths.PARAMS_STAMP.read_text().strip() if paths.PARAMS_STAMP.exists() else None
    if not path.exists() or stamp == sha256(path.read_bytes()).hexdigest():
        return True
    try:  # git holds this exact content: committed, staged, or recorded by `dvc exp run`
        blob = subprocess.run(["git", "hash-object", "--", str(path)], capture_output=True, text=True, check=True)
        return subprocess.run(["git", "cat-file", "-e", blob.stdout.strip()], capture_output=True).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return False


def write_params(text: str, force: bool = False, path: Path = paths.PARAMS) -> Path | None:
    """Write `text` to params.yaml, its digest beside; return the backup of a hand edit (with `force`, else raise)."""
    backup = None
    if path.exists() and path.read_text(encoding="utf-8") != text and not disposable(path):
        if not force:
            raise ParamsError(
                f"{path} has changes that are neither the last composition nor in git (a hand edit?), so it is left "
                f"as it is. Settings are edited in {paths.CONF_DIR}/ (or passed as key=value overrides); to compose "
                f"anyway and keep this file as {path}.<time>.bak, add --force"
            )
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        write_text(backup, path.read_text(encoding="utf-8"))
    write_text(path, text)
    write_text(paths.PARAMS_STAMP, sha256(text.encode()).hexdigest() + "\n")
    return backup


def main(argv: list[str] | None = None) -> int:
    """Compose params.yaml from conf/ (a profile and overrides), print the schema, or print the composed profile."""
    parser = stage_parser("params", params.__doc__)
    parser.add_argument("--profile", help=f"compose this profile ({', '.join(profiles())})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. train.epochs=10")
    parser.add_argument("--force", action="store_true", help="overwrite a hand-edited params.yaml (kept as .bak)")
    parser.add_argument("--describe", action="store_true", help="print every setting, what it may be and what it does")
    args = parser.parse_args(argv)
    if args.describe:
        print(params.describe())
        return 0
    if args.profile or args.overrides:
        overrides = ([f"profile={args.profile}"] if args.profile else []) + list(args.overrides)
        try:
            backup = write_params(composed(overrides), force=args.force)
            if args.profile:  # the profile a plain `dvc exp run` composes: conf/local/profile.yaml, git-ignored
                head = f"# @package _global_\n# written by `python -m pipeline.params --profile {args.profile}`\n"
                write_text(paths.PROFILE_CHOICE, head + f"defaults:\n  - override /profile: {args.profile}\n")
        except ParamsError as exc:
            return fail("params", exc)
        if backup:
            print(f"params: your edited params.yaml is kept as {backup}")
        print(f"params: composed {paths.PARAMS} from {paths.CONF_DIR}/ with {' '.join(overrides)}")
    print(f"profile: {params.profile()}")
    return 0
