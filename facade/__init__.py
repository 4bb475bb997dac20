"""The routing façade: the data plane in front of the monolith and the extracted services.

- `facade.config`: the `routing.yaml` model and its loader (`load_config`, `check_file`).
- `facade.routing`: the immutable route table; matching and upstream choice are pure.
- `facade.proxy`: the ASGI proxy core (streaming, retries, breakers, the write hold).
- `facade.app`: `create_app` composes core, admin API, reloader and addons.
- `facade.edit` / `facade.diff`: the comment-keeping weight shift and the route-by-route diff.
- `facade.traffic` / `facade.dryrun`: request recording and the routing dry-run over it.
- `facade.shadow`: the shadow addon and everything it needs (the core imports none of it).

`create_app` is imported on first use, so `import facade.config` stays light.
"""

from __future__ import annotations

from typing import Any

from facade.config import ConfigError, FacadeConfig, check_file, load_config
from facade.diff import Change, diff_configs, diff_files
from facade.edit import ShiftResult, shift_weights, write_atomically
from facade.exceptions import FacadeError
from facade.routing import RouteTable

__all__ = [
    "Change",
    "ConfigError",
    "FacadeConfig",
    "FacadeError",
    "RouteTable",
    "ShiftResult",
    "check_file",
    "create_app",
    "diff_configs",
    "diff_files",
    "load_config",
    "shift_weights",
    "write_atomically",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from facade.app import create_app

        return create_app
    raise AttributeError(f"module 'facade' has no attribute {name!r}")
