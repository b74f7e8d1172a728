"""The HTML leaderboard in headless Chromium, driven over the DevTools protocol: sort by clicking, screenshot.

Needs Debian's ``chromium`` and ``websocket-client``; skips without them except under CI (CI=true), where
it fails. The page is opened from a ``file://`` URL; Chromium only listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from promptintern.evaluation.scoring import oracle_predictions
from promptintern.harness import leaderboard
from promptintern.harness.submissions import submit
from promptintern.tasks import get_task

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
try:
    import websocket
except ImportError:  # pragma: no cover - exercised only where the dev extra is missing
    websocket = None

_MISSING = (
    "chromium not found (apt-get install chromium)"
    if BROWSER is None
    else ("websocket-client not installed" if websocket is None else "")
)
pytestmark = pytest.mark.skipif(bool(_MISSING) and not os.environ.get("CI"), reason=_MISSING)


class DevTools:
    """A headless Chromium and a DevTools websocket session on its first page."""

    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        assert not _MISSING, _MISSING  # under CI a missing browser fails here
        self.timeout, self.next_id, self.events = timeout, 0, []
        argv = [
            BROWSER,
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "about:blank",
        ]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium's own sandbox refuses to run as root
        # its own process group, so that closing also ends the renderer and zygote children
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port: {err[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
        )

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def eval(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the element."""
        box = self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            try:
                self.send("Browser.close")
            except Exception:  # noqa: BLE001 - the browser may already be gone; it is killed below
                pass
            self.ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc.stderr.close()


def _submit_nl2f(root: Path, store: Path, name: str, model: str, tokens: int, wrong_every: int) -> None:
    """An NL2F submission from the references, every ``wrong_every``-th prediction made wrong."""
    preds = root / "predictions"
    preds.mkdir(parents=True)
    refs = oracle_predictions(get_task("nl2f").load("test"))
    with open(preds / "nl2f.jsonl", "w", encoding="utf-8") as fh:
        for i, (tid, ref) in enumerate(refs.items()):
            pred = "WRONG()" if wrong_every and i % wrong_every == 0 else ref
            fh.write(json.dumps({"task_id": tid, "prediction": pred, "input_tokens": tokens}) + "\n")
    (root / "submission.yaml").write_text(
        f"name: {name}\nmodel: {model}\nmethod: test\ncontact: x@example.org\n", encoding="utf-8"
    )
    assert submit(root, store_path=store).status == "recorded"


def test_html_leaderboard_sorts_on_click_and_renders(tmp_path):
    store = tmp_path / "results.sqlite"
    # recorded (id) order: alpha 100 % EM, beta 50 %, gamma 75 % (names sort alpha < beta < gamma)
    _submit_nl2f(tmp_path / "a", store, "alpha <b>x</b>", "gpt-4", 900, 0)
    _submit_nl2f(tmp_path / "b", store, "beta", "embedded", 120, 2)
    _submit_nl2f(tmp_path / "c", store, "gamma", "my-org/unpriced", 400, 4)
    page = tmp_path / "leaderboard.html"
    page.write_text(leaderboard.render("html", store), encoding="utf-8")

    dt = DevTools(tmp_path / "chromium-profile")
    try:
        dt.send("Page.enable")
        dt.send(
            "Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False
        )
        dt.send("Page.navigate", url=page.as_uri())
        dt.wait_event("Page.loadEventFired")
        names = (
            "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.cells[1].textContent)"
        )
        assert dt.eval(names) == ["alpha <b>x</b>", "beta", "gamma"]  # escaped: text, not markup
        assert dt.eval("document.querySelectorAll('#plot circle.point').length") == 3
        headers = dt.eval("Array.from(document.querySelectorAll('#leaderboard th')).map(h => h.textContent)")
        metric_col = headers.index("NL2F-Spider em (95% CI)") + 1
        selector = f"#leaderboard thead th:nth-child({metric_col})"

        dt.click(selector)
        assert dt.eval(names) == ["beta", "gamma", "alpha <b>x</b>"]  # ascending EM: 50, 75, 100
        assert dt.eval(f"document.querySelector('{selector}').getAttribute('aria-sort')") == "ascending"
        dt.click(selector)
        assert dt.eval(names) == ["alpha <b>x</b>", "gamma", "beta"]  # descending
        cost_col = headers.index("NL2F-Spider USD/inst.") + 1
        dt.click(f"#leaderboard thead th:nth-child({cost_col})")
        assert dt.eval(names) == ["beta", "alpha <b>x</b>", "gamma"]  # 0, 0.027, then the blank cost last
        dt.click(f"#leaderboard thead th:nth-child({metric_col})")
        dt.click(f"#leaderboard thead th:nth-child({metric_col})")  # back to descending EM for the picture

        shot = dt.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        png = base64.b64decode(shot["data"])
    finally:
        dt.close()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    out = Path(os.environ.get("LEADERBOARD_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.png").write_bytes(png)
