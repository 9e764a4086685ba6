"""A real tusou UI server for tests: a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UIServer:
    def __init__(self, index: Path, *extra: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        tusou = str(Path(sys.executable).with_name("tusou"))
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
        self.process = subprocess.Popen(
            [tusou, "serve", str(index), "--port", str(self.port), "--device", "cpu", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                urllib.request.urlopen(self.url + "healthz", timeout=2)  # open with or without keys
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("server did not start within 120 s")
                time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: a test's gradio_client keeps an event stream open, which a
        drain waits for (up to 30 s; test_api's SIGTERM test shows the drain itself)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
