"""What the benchmark scripts share: progress lines with their own tag, and `wellwatch` commands run
as a user runs them (a subprocess of this interpreter), each timed."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Callable


def steps(tag: str) -> tuple[Callable[[str], None], Callable[..., str]]:
    """-> (say(text): a progress line on stderr, wellwatch(*args): run `wellwatch ARGS`, its stdout)."""

    def say(text: str) -> None:
        print(f"[{tag}] {text}", file=sys.stderr, flush=True)

    def wellwatch(*args: str) -> str:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "wellwatch", *args], check=True, capture_output=True, text=True)
        say(f"wellwatch {args[0]} {args[1] if len(args) > 1 else ''}: {time.perf_counter() - t0:.0f} s")
        return out.stdout

    return say, wellwatch
