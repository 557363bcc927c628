"""How the browser test and ``bench/bench_serve.py`` start Debian's Chromium headless on this offline machine."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (apt-get install chromium); Playwright drives it
# no GPU, no sandbox (root), and none of Chromium's background connections, which a closed network refuses
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
