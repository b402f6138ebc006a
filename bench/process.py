"""A bench path as a whole process: its wall time, its own peak RSS and the result line it prints."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    """One whole process: wall seconds, its peak RSS, what it printed."""

    seconds: float
    peak_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)


def run_process(command: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run `command` to its end; its wall time from fork to exit and its own peak RSS (wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=ROOT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise RuntimeError(
            f"{' '.join(command[:4])} failed ({process.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
        )
    result: dict[str, Any] = next(
        (
            json.loads(line.removeprefix("BENCH-RESULT "))
            for line in stdout.splitlines()
            if line.startswith("BENCH-RESULT ")
        ),
        {},
    )
    return Measured(seconds, usage.ru_maxrss / 1024, result)
