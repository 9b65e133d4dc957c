"""``recipe report`` from a real run, opened in a real headless browser (Debian's chromium).

The browser is driven over the Chrome DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages on fds 3 and 4, no websocket library), so
the test sees what a person's browser would: uncaught exceptions, console errors
(including Content-Security-Policy refusals), every request the page makes, the
rendered DOM, and a screenshot. Every request leaves through a proxy on a closed
loopback port, so even a page that tried could not reach a network.

Skipped only when no chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_PRETRAIN, TINY_SFT, tiny_recipe

pytestmark = pytest.mark.integration

RECIPE = tiny_recipe(TINY_PRETRAIN + ", save_every: 6", TINY_SFT + ", save_every: 4")

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless chromium over the DevTools pipe; one page (target) at a time."""

    def __init__(self, executable: str, profile: Path) -> None:
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()

        def plumbing() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out)
            # Out of the way first: either pipe end may itself be fd 3 or 4.
            low_in = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            low_out = fcntl.fcntl(out_write, fcntl.F_DUPFD, 10)
            os.dup2(low_in, 3)
            os.dup2(low_out, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=plumbing, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_read)
        os.close(out_write)
        self._next = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._out, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                self._messages.put(json.loads(message))

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while ident not in self._replies:
            self._pump(deadline, method)
        reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _pump(self, deadline: float, waiting_for: str) -> None:
        try:
            message = self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"chromium did not answer {waiting_for}") from None
        if message is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            self._pump(deadline, method)

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._pump(deadline, "events")
            except TimeoutError:
                return

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        self.settle(0.5)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        metrics = self.send("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"]) + 1
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": min(height, 12000), "deviceScaleFactor": 1,
                   "mobile": False})
        shot = self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors (CSP refusals...)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(f"exception: {details.get('exception', {}).get('description')}"
                             f" {details.get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error", "assert"):
                found.append(f"console.{params['type']}: "
                             f"{[a.get('value') for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", session=False, timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(scope="module")
def browser_path() -> str:
    found = find_browser()
    if found is None:
        pytest.skip("no chromium installed (.ci/run installs it: apt-get install chromium)")
    return found


@pytest.fixture
def browser(browser_path: str, tmp_path: Path):
    opened = Browser(browser_path, tmp_path / "chromium-profile")
    yield opened
    opened.close()


def recipe(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "llm_recipe", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"recipe {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe run once for every test here (~30 s on 2 cores)."""
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "tiny.yaml").write_text(RECIPE)
    recipe(workdir, "run", "tiny.yaml", "-q")
    return workdir


DOM = """(() => {
  const rows = [...document.querySelectorAll('table.stages tbody tr')].map(tr => ({
    stage: tr.dataset.stage, state: tr.dataset.state, text: tr.innerText}));
  const curves = [...document.querySelectorAll('.training')].map(d => {
    const svg = d.querySelector('.loss-curve svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {stage: d.dataset.stage, svg: !!svg, width: box.width, height: box.height,
            lines: svg ? svg.querySelectorAll('path').length : 0};
  });
  const evals = [...document.querySelectorAll('table.eval tr[data-model]')].map(tr => ({
    model: tr.dataset.model, text: tr.innerText}));
  const graph = document.querySelector('svg.lineage');
  const box = graph ? graph.getBoundingClientRect() : {width: 0, height: 0};
  return {rows, curves, evals, title: document.title,
          graph: {width: box.width, height: box.height,
                  stages: [...document.querySelectorAll('svg.lineage g.stage')].map(
                    g => g.dataset.node),
                  edges: document.querySelectorAll('svg.lineage path.edge').length},
          scripts: document.scripts.length,
          canvases: document.querySelectorAll('canvas').length,
          svgs: document.querySelectorAll('svg').length};
})()"""


def external_references(html: str) -> list[str]:
    """src=/href=/url() values that point at a network (http, https, or scheme-relative)."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]*)""", html, re.I)
    found += re.findall(r"""url\(\s*["']?\s*((?:https?:)?//[^)"']*)""", html, re.I)
    found += re.findall(r"@import", html)
    return found


def test_report_of_a_real_run_in_a_headless_browser(ran: Path, browser: Browser,
                                                    tmp_path: Path) -> None:
    recipe(ran, "report", "tiny.yaml", "-o", "report.html")
    report = ran / "report.html"
    html = report.read_text("utf-8")
    assert external_references(html) == []
    assert "<script" not in html.lower()

    browser.open(report.as_uri())
    dom = browser.evaluate(DOM)
    screenshot = tmp_path / "report.png"
    browser.screenshot(screenshot)

    assert browser.errors() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []
    assert dom["title"] == "tiny · recipe report"
    # The stage table: every stage with its status.
    assert [(r["stage"], r["state"]) for r in dom["rows"]] == [
        ("pretrain", "fresh"), ("sft", "fresh"), ("eval", "fresh")]
    assert all("fresh" in r["text"] for r in dom["rows"])
    # A rendered loss curve per training stage.
    assert [c["stage"] for c in dom["curves"]] == ["pretrain", "sft"]
    for curve in dom["curves"]:
        assert curve["svg"] and curve["width"] > 400 and curve["height"] > 100, curve
        assert curve["lines"] > 5, curve
    # The eval table: each model's accuracy, as n/total.
    evals = {e["model"]: e["text"] for e in dom["evals"]}
    assert set(evals) == {"pretrain", "sft"}
    for text in evals.values():
        assert re.search(r"\d+\.\d% \(\d+/8\)", text), text
    # The lineage graph, drawn.
    assert dom["graph"]["stages"] == ["pretrain", "sft", "eval"]
    assert dom["graph"]["edges"] >= 5 and dom["graph"]["width"] > 300
    assert dom["scripts"] == 0
    # The screenshot: a real picture of a long page.
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 40_000
    copy = os.environ.get("REPORT_SCREENSHOT_DIR")
    if copy:
        shutil.copy(screenshot, Path(copy) / "report.png")


def test_report_works_before_anything_ran(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    recipe(tmp_path, "report", "tiny.yaml", "-o", "empty.html")
    browser.open((tmp_path / "empty.html").as_uri())
    dom = browser.evaluate(DOM)
    assert browser.errors() == []
    assert [(r["stage"], r["state"]) for r in dom["rows"]] == [
        ("pretrain", "missing"), ("sft", "blocked"), ("eval", "blocked")]
    assert [c["svg"] for c in dom["curves"]] == [False, False]
    assert dom["evals"] == []
    assert not (tmp_path / "outputs").exists()


def test_report_shows_a_continual_ledger(browser: Browser, tmp_path: Path) -> None:
    """A continual stage's loss curve with its ledger marks, and the ledger as a timeline
    (the workspace is written by hand: the same files a continual run leaves)."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "c.yaml").write_text((root / "recipes/continual_gpt2.yaml").read_text())
    stage_dir = tmp_path / "outputs/tiny/continual-gpt2/continual"
    stage_dir.mkdir(parents=True)
    rows = [{"step": s, "phase": "train", "loss": 4 - s / 30, "continual_phase":
             "wikitext" if s <= 30 else "imdb"} for s in range(1, 61)]
    rows += [{"step": s, "phase": "probe", "wikitext": 3.5 - s / 100, "verdict": "good"}
             for s in range(10, 61, 10)]
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (stage_dir / "ledger").mkdir()
    entries = [("start", 0, "wikitext"), ("good", 10, "wikitext"), ("rollback", 20, "wikitext"),
               ("commit", 30, "wikitext"), ("good", 40, "imdb"), ("commit", 60, "imdb")]
    (stage_dir / "ledger" / "index.jsonl").write_text("".join(json.dumps(
        {"name": f"{phase}_{kind}_{step}", "type": kind, "phase": phase, "step": step,
         "metrics": {"wikitext": 3.0}}) + "\n" for kind, step, phase in entries))
    recipe(tmp_path, "report", "c.yaml", "-p", "tiny", "-o", "c.html")
    browser.open((tmp_path / "c.html").as_uri())
    dom = browser.evaluate("""(() => {
      const block = document.querySelector('.training[data-stage="continual"]');
      const svg = block.querySelector('.loss-curve svg');
      return {width: svg.getBoundingClientRect().width,
              texts: [...svg.querySelectorAll('text')].map(t => t.textContent.trim()),
              ledger: [...block.querySelectorAll('table.ledger tbody tr')].map(
                tr => [tr.dataset.type, tr.cells[0].innerText.trim()])};
    })()""")
    assert browser.errors() == []
    assert dom["width"] > 400
    assert {"train loss", "probe wikitext", "start", "good", "rollback", "commit", "wikitext",
            "imdb"} <= set(dom["texts"])
    assert dom["ledger"] == [[kind, str(step)] for kind, step, _ in entries]
    browser.screenshot(tmp_path / "continual.png")
    assert (tmp_path / "continual.png").stat().st_size > 20_000


def test_the_harness_sees_script_errors_and_requests(browser: Browser, tmp_path: Path) -> None:
    """The checks above are not vacuous: a throwing script, a console error and a fetch
    (to a closed loopback port) are all reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><title>bad</title><img src='http://127.0.0.1:9/x.png'>"
                    "<script>console.error('oops'); undefinedFunction();</script>")
    browser.open(page.as_uri())
    errors = browser.errors()
    assert any("undefinedFunction" in e for e in errors), errors
    assert any("oops" in e for e in errors), errors
    assert "http://127.0.0.1:9/x.png" in browser.requests()
    assert external_references(page.read_text()) == ["http://127.0.0.1:9/x.png"]
