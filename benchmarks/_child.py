"""Run a benchmark's measured part in a child process and read its wall seconds, its own peak RSS and its JSON line.

Why a child: peak RSS (``ru_maxrss`` from ``wait4``) is the child's alone, not the parent's generator or earlier runs;
and a run that passes ``max_rss_gb`` or ``max_seconds`` is killed and reported as stopped rather than taking the
machine down. Shared by ``calibrate_scale.py`` and ``ledger_calibrate.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(
    cmd: list[str], max_rss_gb: float, max_seconds: float, *, poll_s: float = 0.1, digits: int = 2
) -> dict[str, Any]:
    """``seconds`` (wall, to ``digits`` places), ``peak_rss_mb``, ``status`` (ok, failed: <last stderr line>,
    stopped: <why>) and, when ok, the fields of the JSON object the child printed last."""
    with tempfile.TemporaryFile("w+") as out_fh, tempfile.TemporaryFile("w+") as err_fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, text=True)
        stopped = ""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(poll_s)
            if _rss_kb(proc.pid) > max_rss_gb * 1024 * 1024:
                stopped = f"stopped: RSS over {max_rss_gb:g} GB"
            elif time.perf_counter() - start > max_seconds:
                stopped = f"stopped: over {max_seconds:g} s"
            if stopped:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
        proc.returncode = status
        wall = time.perf_counter() - start
        out_fh.seek(0)
        err_fh.seek(0)
        out_text, err_text = out_fh.read(), err_fh.read()
    result: dict[str, Any] = {"seconds": round(wall, digits), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if stopped:
        result["status"] = stopped
    elif status != 0:
        result["status"] = "failed: " + (err_text.strip().splitlines() or ["?"])[-1][:300]
    else:
        result["status"] = "ok"
        result.update(json.loads(out_text.strip().splitlines()[-1]))
    return result
