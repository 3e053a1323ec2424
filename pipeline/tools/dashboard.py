"""`python -m pipeline.tools.dashboard` (`make dashboard`): serves the tuning study in optuna-dashboard (pinned in the
`dashboard` extra) at http://127.0.0.1:8080/ until Ctrl-C. It opens the storage tune uses: $DIGIT_TUNE_STORAGE,
else params.yaml tune.storage, else the SQLite file data/processed/optuna.db. The URL is handed over inside this
process, so a password never shows in `ps`, and it is printed masked. Not a stage."""

from __future__ import annotations

import contextlib
import sys
from typing import Any
from wsgiref.simple_server import make_server

from pipeline import params, paths
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.secrets import mask_url
from pipeline.params import ParamsError


def app(url: str) -> Any:
    """Return optuna-dashboard's WSGI application over the storage at `url`."""
    import optuna
    import optuna_dashboard

    return optuna_dashboard.wsgi(optuna.storages.RDBStorage(url))


def main(argv: list[str] | None = None) -> int:
    """Serve the study's storage in optuna-dashboard until interrupted."""
    parser = stage_parser("dashboard", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    args = parser.parse_args(argv)
    try:
        url = paths.tune_storage(params.load("tune").storage)
    except ParamsError as exc:
        return fail("dashboard", exc)
    if url == f"sqlite:///{paths.OPTUNA_DB}" and not paths.OPTUNA_DB.is_file():
        return fail("dashboard", f"no study yet in {paths.OPTUNA_DB}: run `dvc repro tune` (or make quick) first")
    try:
        import optuna_dashboard  # noqa: F401  (only: is it installed?)
    except ImportError:
        return fail("dashboard", "optuna-dashboard is not installed: pip install -e '.[dashboard]' (make dashboard)")
    print(f"dashboard: {mask_url(url)} at http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    with make_server(args.host, args.port, app(url)) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()  # until Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
