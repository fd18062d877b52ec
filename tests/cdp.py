"""Headless Debian chromium driven over the Chrome DevTools Protocol (a WebSocket, through `websockets`):
enough to open a page, click, read the DOM, grant or deny permissions and take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.helpers import wait_for


class Chromium:
    """One headless chromium with a page on `url`; `flags` are added to the usual headless ones."""

    def __init__(self, url: str, profile: Path, *flags: str) -> None:
        browser = shutil.which("chromium")
        assert browser, "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        profile.mkdir(parents=True, exist_ok=True)
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=900,900",
            *flags,
            url,
        ]
        self._log = (profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        assert wait_for(port_file.exists, 30, 0.1), (profile / "chromium.log").read_text(errors="replace")[-2000:]
        port = port_file.read_text().split()[0]
        pages: list[dict[str, Any]] = []

        def page_listed() -> bool:
            nonlocal pages
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            return bool(pages)

        assert wait_for(page_listed, 30, 0.1)
        # Entered as websockets 17 asks of a connection kept past one block (older versions return it as is).
        self._ws: ClientConnection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None).__enter__()
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command's result (events that arrive meanwhile are skipped)."""
        call = next(self._ids)
        self._ws.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == call:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise), run as a user gesture."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True, userGesture=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_js(self, expression: str, timeout: float) -> Any:
        """Poll `expression` until it is truthy; its last value."""
        deadline = time.monotonic() + timeout
        value = self.js(expression)
        while not value and time.monotonic() < deadline:
            time.sleep(0.25)
            value = self.js(expression)
        return value

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._log.close()
