"""`python -m pipeline.tools.dashboard` (`make dashboard`; not a stage): serves the tuning study in optuna-dashboard
(the `dashboard` extra) at http://127.0.0.1:8080/ until Ctrl-C, from tune's storage ($DIGIT_TUNE_STORAGE, else
tune.storage, else data/processed/optuna.db), handed over in-process: a password never shows in `ps` or the log."""

from __future__ import annotations

import contextlib
import sys
from typing import Any
from wsgiref.simple_server import make_server

from pipeline import params, paths
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.secrets import mask_url


def app(url: str) -> Any:
    """Return optuna-dashboard's WSGI application over the storage at `url`."""
    import optuna_dashboard

    return optuna_dashboard.wsgi(url)


@reports_errors("dashboard")
def main(argv: list[str] | None = None) -> int:
    """Serve the study's storage in optuna-dashboard until interrupted."""
    parser = stage_parser("dashboard", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    args = parser.parse_args(argv)
    url = paths.tune_storage(params.load("tune").storage)
    if url == f"sqlite:///{paths.OPTUNA_DB}" and not paths.OPTUNA_DB.is_file():
        return fail("dashboard", f"no study yet in {paths.OPTUNA_DB}: run `dvc repro tune` (or make quick) first")
    try:
        handler = app(url)
    except ImportError:
        return fail("dashboard", "optuna-dashboard is not installed: pip install -e '.[dashboard]' (make dashboard)")
    print(f"dashboard: {mask_url(url)} at http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    with make_server(args.host, args.port, handler) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
