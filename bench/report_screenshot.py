"""Render an evaluation's HTML report in headless Chromium and save a PNG screenshot.

    python bench/report_screenshot.py runs/eval_debug/report.html --out report.png

Needs a Chromium binary (Debian: ``apt-get install chromium``); it is started with no network
features, a fresh profile and no sandbox (as root in containers). Prints the file it wrote, or
says which binary is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_browser() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def screenshot(report: Path, out: Path, width: int, height: int) -> Path:
    browser = find_browser()
    if browser is None:
        raise SystemExit(f"no browser found ({', '.join(BINARIES)}): apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            report.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not out.is_file():
        raise SystemExit(f"{browser} did not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    path = screenshot(args.report, args.out, args.width, args.height)
    print(f"wrote {path} ({path.stat().st_size} bytes) from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
