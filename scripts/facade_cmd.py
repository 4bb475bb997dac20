"""`strangler facade serve`: run the routing façade under uvicorn (uvloop + httptools).

`serve_facade` is the plain function behind the command. It validates `routing.yaml` (and the
admin token rule) before anything listens, so a bad file exits 1 with every `file:line:col`
problem. The façade is composed here: the core plus the addons in `ADDONS` (shadowing). With
`--workers N` uvicorn starts N processes, each building the app from the factory
`scripts.facade_cmd:app_from_env` and watching the file itself; SIGHUP to the parent reloads the file in
every worker in place (each keeps serving its last good table on a problem), where plain uvicorn
would restart the workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer
import uvicorn
from uvicorn.supervisors import Multiprocess

from facade import app as facade_app
from facade.accesslog import ACCESS_LOGGER
from facade.app import ACCESS_LOG_ENV, CONFIG_ENV, HOST_ENV, SUPERVISOR_ENV, WATCH_ENV, WORKERS_ENV, AddonFactory, FacadeApp, create_app
from facade.exceptions import FacadeError
from facade.shadow import ShadowAddon

__all__ = ["ADDONS", "app", "app_from_env", "logging_config", "serve_facade"]

ADDONS: tuple[AddonFactory, ...] = (ShadowAddon.for_config,)
"""The addons the served façade runs beside its built-in metrics and access log."""


def app_from_env() -> FacadeApp:
    """The factory of `uvicorn --factory` workers: `facade.app.app_from_env` with `ADDONS`."""
    return facade_app.app_from_env(addon_factories=ADDONS)

app = typer.Typer(no_args_is_help=True, help="Run the routing façade.")

log = logging.getLogger("strangler.facade")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, except that SIGHUP reloads routing.yaml.

    Each worker reloads on SIGHUP itself (validate, swap, keep the last good table on a problem),
    so forwarding the signal reloads them all without dropping a connection; restarting them, as
    uvicorn does by default, would close every kept-alive client connection. A worker ignores
    SIGHUP from the moment it builds the app until its reloader listens; one still starting up
    reads the new file anyway.
    """

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading routing.yaml in %d workers", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)


def logging_config(level: str = "info", access_log: bool = True) -> dict[str, Any]:
    """Logging for uvicorn and the façade on stderr (access lines go straight to stdout, buffered;
    the `strangler.access` logger is the fallback). Passed to uvicorn as `log_config` so that
    every worker process applies it."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "line": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "strangler": {"handlers": ["stderr"], "level": level, "propagate": False},
            ACCESS_LOGGER: {
                "handlers": ["access"] if access_log else [],
                "level": "INFO" if access_log else "WARNING",
                "propagate": False,
            },
        },
    }


def check_serve_options(*, port: int, log_level: str) -> None:
    """Refuse a port or log level uvicorn would misread (it takes port 99999 modulo 65536 and
    fails deep inside logging setup on an unknown level), before anything is built or bound."""
    if not 1 <= port <= 65535:
        raise FacadeError(f"--port {port} is not a TCP port; give one from 1 to 65535")
    if log_level.lower() not in LOG_LEVELS:
        raise FacadeError(f"--log-level {log_level!r} is not a log level; use one of: {', '.join(LOG_LEVELS)}")


def serve_facade(
    config: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = True,
    watch: bool = True,
) -> None:
    """Serve the façade until interrupted. Raises `ConfigError`/`FacadeError` before listening."""
    check_serve_options(port=port, log_level=log_level)
    # Validates the file and the token rule; with one worker this is the app that serves.
    facade = create_app(config, host=host, access_log=sys.stdout if access_log else None, watch=watch, addon_factories=ADDONS)
    options: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop",
        # uvicorn's httptools protocol plus the request-head limits of routing.yaml.
        http="facade.protocol:FacadeHttpProtocol",
        lifespan="on",
        server_header=False,
        date_header=False,
        access_log=False,
        # The façade appends the peer to X-Forwarded-For itself; uvicorn must not rewrite the peer.
        proxy_headers=False,
        log_config=logging_config(log_level, access_log),
        timeout_graceful_shutdown=10,
        backlog=4096,
    )
    if workers <= 1:
        uvicorn.run(facade, **options)
        return
    os.environ[CONFIG_ENV] = str(Path(config).resolve())
    os.environ[HOST_ENV] = host
    os.environ[ACCESS_LOG_ENV] = "stdout" if access_log else "off"
    os.environ[WATCH_ENV] = "1" if watch else "0"
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    os.environ[WORKERS_ENV] = str(workers)
    uv_config = uvicorn.Config("scripts.facade_cmd:app_from_env", factory=True, workers=workers, **options)
    sock = uv_config.bind_socket()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            WorkerSupervisor(uv_config, sockets=[sock]).run()
    finally:
        sock.close()


@app.command("serve")
def serve(
    config: Path = typer.Option(Path("routing.yaml"), "--config", "-c", help="The routing file (routing.yaml); watched and reloaded live."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Other than loopback, the admin API needs its token set."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (one event loop each); scale with cores."),
    log_level: str = typer.Option("info", "--log-level", help="Log level of the façade and uvicorn: debug, info, warning, error."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Write one JSON line per request on stdout."),
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Reload when the file changes (SIGHUP and POST /_strangler/reload always work)."),
) -> None:
    """Run the routing façade: proxy every request per routing.yaml, admin API under /_strangler/."""
    serve_facade(config, host=host, port=port, workers=workers, log_level=log_level, access_log=access_log, watch=watch)
