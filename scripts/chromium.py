"""Headless Chromium settings shared by the README screenshots and the browser test."""

from __future__ import annotations

import socket

# Debian's /usr/bin/chromium, offline, in a container: no sandbox, GPU, network chatter or updates.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
