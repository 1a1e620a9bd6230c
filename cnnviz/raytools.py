"""Joining Ray, for the jobs that can run on it (`cnnviz.batch`, `cnnviz.sweep`).

Ray is an optional extra (``pip install 'cnnviz[ray]'``). A job runs on Ray when asked (``--ray``)
or when ``RAY_ADDRESS`` names a cluster; otherwise ``ray.init`` starts a local Ray. The driver
forwards the settings in `FORWARDED_ENV` to the workers: a cluster's nodes do not share its
environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FORWARDED_ENV = (
    "CNNVIZ_WEIGHTS",
    "CNNVIZ_DEVICE",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_TOKEN",
)


def ray_requested(flag: bool = False) -> bool:
    """``--ray``, or ``RAY_ADDRESS`` set in the environment."""
    return flag or bool(os.environ.get("RAY_ADDRESS", "").strip())


def import_ray() -> Any:
    """``ray`` with ``ray.data`` imported, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(f"Ray mode needs Ray Data: pip install 'cnnviz[ray]' ({exc})") from None
    return ray


def package_root() -> Path:
    """The folder that holds the imported ``cnnviz`` package."""
    return Path(__file__).resolve().parents[1]


def connect() -> Any:
    """Join the cluster at ``RAY_ADDRESS``, or start a local Ray; a running session is reused.

    A local Ray's workers also get this cnnviz on their ``PYTHONPATH`` (a checkout that is not
    installed, or a test's worktree); a cluster's nodes need cnnviz installed (see the README).
    """
    ray = import_ray()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS", "").strip() or None
        env = worker_env(local=address is None)
        ray.init(
            address=address,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
            logging_level="WARNING",
        )
    return ray


def worker_env(local: bool = True) -> dict[str, str]:
    """The environment variables Ray's workers get: `FORWARDED_ENV` as set here, and for a local
    Ray the folder of this cnnviz in front of ``PYTHONPATH``."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if local:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root()), os.environ.get("PYTHONPATH")]))
    return env
