"""Headless Chromium driven over the DevTools protocol, in real time, for the /map viewer.

Chromium's ``--virtual-time-budget`` runs the page clock ahead while MapLibre's web workers still
tile the field GeoJSON, so a page screenshotted or dumped that way had fetched its fields but never
drawn them. :func:`open_page` instead loads the page, polls ``document.body.dataset`` (the viewer's
counters) until a condition holds or a deadline passes, and can save a screenshot of what is drawn.

Also a command, which made the README's screenshot::

    python tests/serve/browser.py URL OUT.png [--size 1024x640]
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from magseg_ray.cluster import LOOPBACK, free_port


def chromium() -> str | None:
    """The Chromium executable on PATH (Debian: ``apt-get install chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Tab:
    """One page over the protocol: ``call`` a method, keeping the console lines seen on the way."""

    def __init__(self, ws):
        self.ws, self.next_id, self.console = ws, 0, []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in message["params"]["args"]))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append(message["params"]["exceptionDetails"].get("text", "exception"))

    def dataset(self) -> dict[str, int]:
        value = self.call("Runtime.evaluate", expression="JSON.stringify(document.body ? document.body.dataset : {})",
                          returnByValue=True)["result"]["value"]
        return {k: int(v) for k, v in json.loads(value).items()}


def open_page(url: str, until, seconds: float = 120, size: tuple[int, int] = (768, 512),
              shot: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Load ``url`` in headless Chromium (software WebGL) and poll the page's counters until
    ``until(counters)`` is true or ``seconds`` pass; save a PNG screenshot at ``shot`` if given.
    Returns the last counters and the page's console lines. Chromium is stopped in every case."""
    from websockets.sync.client import connect

    port = free_port()
    cmd = [chromium(), "--headless", "--no-sandbox", "--hide-scrollbars", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", f"--window-size={size[0]},{size[1]}", f"--remote-debugging-port={port}",
           f"--remote-debugging-address={LOOPBACK}", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/json", timeout=2) as r:
                    ws_url = next(t["webSocketDebuggerUrl"] for t in json.load(r) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with connect(ws_url, max_size=2**27, open_timeout=30) as ws:
            tab = _Tab(ws)
            tab.call("Runtime.enable")
            tab.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
            tab.call("Page.navigate", url=url)
            deadline = time.monotonic() + seconds
            counters = tab.dataset()
            while not until(counters) and time.monotonic() < deadline:
                time.sleep(1)
                counters = tab.dataset()
            if shot:
                png = tab.call("Page.captureScreenshot", format="png")["data"]
                Path(shot).write_bytes(base64.b64decode(png))
            return counters, tab.console
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fields_drawn(counters: dict[str, int]) -> bool:
    """The viewer has drawn field outlines and every tile in view is in."""
    return counters.get("drawn", 0) > 0 and counters.get("idle", 0) == 1


if __name__ == "__main__":
    url, out = sys.argv[1], sys.argv[2]
    width, height = map(int, (sys.argv[4] if sys.argv[3:4] == ["--size"] else "1024x640").split("x"))
    counters, console = open_page(url, fields_drawn, seconds=300, size=(width, height), shot=out)
    print(json.dumps({"counters": counters, "console": console[-5:]}))
