"""Start a local chroma server (``chroma run``, shipped with the chromadb package).

For tests and benchmarks, and for a user who wants one on their own machine; production setups
run ``chroma run`` themselves and pass its URL (``--chroma-url``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.errors import SetupError


class LocalChromaServer:
    """``with LocalChromaServer(folder) as url:`` — a server on a free 127.0.0.1 port."""

    def __init__(self, folder: str | os.PathLike, *, start_timeout_s: float = 60.0) -> None:
        self.folder = Path(folder)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> str:
        import chromadb
        from chromadb.config import Settings

        binary = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        if not Path(binary).exists():
            raise SetupError("the `chroma` command (from the chromadb package) is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "server.log", "wb")
        self.process = subprocess.Popen(
            [binary, "run", "--path", str(self.folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port,
                                    settings=Settings(anonymized_telemetry=False)).heartbeat()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
                    raise SetupError(f"chroma run did not start within {self.start_timeout_s:g} s: {tail}")
                time.sleep(0.2)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
