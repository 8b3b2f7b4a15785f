"""`nanotune serve` in a child process, for scripts that measure a server from outside (its engine never
shares the client's GIL): start it, wait until /health answers, or stop with the server's own log."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def nanotune_command(*args: str) -> list[str]:
    """argv running the nanotune CLI with this interpreter (where the console script is not on PATH)."""
    return [sys.executable, "-m", "nanotune", *args]


def start_server(model: str, device: str, port: int, env: dict, timeout: float, log: Path,
                 extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`nanotune serve` on 127.0.0.1:port (plus `extra_args`), its output to `log`; returns once /health
    answers 200. SystemExit (with the log's tail) if it exits first or does not answer within `timeout` s."""
    import httpx

    proc = subprocess.Popen(nanotune_command("serve", "--model", model, "--device", device, "--port", str(port),
                                             *extra_args),
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"nanotune serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"nanotune serve did not answer /health within {timeout:.0f} s")
