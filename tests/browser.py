"""Test helper: load a local HTML file in headless Chromium and report what the page did.

It speaks the Chrome DevTools Protocol over `--remote-debugging-pipe`: Chromium reads
commands from its file descriptor 3 and writes replies and events to descriptor 4, each
message one JSON object ended by a NUL byte. So no websocket library and no port are
needed, only the standard library. The browser runs with a fresh temporary profile, no
network (every host name resolves to nothing) and a wall-clock limit; it is killed and
its profile removed when `load_page` returns, whatever happened.
"""

import base64
import fcntl
import json
import os
import pathlib
import select
import shutil
import signal
import tempfile
import time

# The names Chromium is installed under: Debian's `chromium` package, other
# distributions' package, and Google's build.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",  # the new headless mode (the old one is a separate binary now)
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB, too little for renderers
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
    # No page may reach the network: every host name fails to resolve. The requests
    # list still records any attempt, so a test sees it.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)
# What the page reports once loaded: run in the page by Runtime.evaluate.
PAGE_FACTS = """(() => ({
  title: document.title,
  images: Array.from(document.images, (image) => ({
    src: (image.getAttribute("src") || "").slice(0, 60),
    naturalWidth: image.naturalWidth,
    complete: image.complete,
  })),
  cells: Array.from(document.querySelectorAll("tr[data-epoch] [data-column]"), (cell) => ({
    epoch: cell.closest("tr").dataset.epoch,
    column: cell.dataset.column,
    value: cell.dataset.value === undefined ? null : cell.dataset.value,
    text: cell.textContent.trim(),
  })),
  links: Array.from(document.querySelectorAll("a[href]"), (link) => link.getAttribute("href")),
  viewport_width: window.innerWidth,
  page_width: document.documentElement.scrollWidth,
  page_height: document.documentElement.scrollHeight,
}))()"""
# The tallest full-page screenshot taken; Chromium refuses textures much beyond this.
MAX_SCREENSHOT_HEIGHT = 16000


class BrowserError(RuntimeError):
    """Chromium could not load the page in time; the message ends with its stderr's tail."""


def chromium_path():
    """The path of an installed Chromium (or Chrome), or None when there is none."""
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def load_page(path, screenshot=None, width=1280, height=900, timeout=60):
    """Load the HTML file at `path` in a `width` x `height` CSS-pixel viewport and report.

    Returns a dict: "url" (the file's URL), "exceptions" (uncaught JavaScript
    exceptions), "console_errors" (console.error calls and the browser's own error log
    entries, e.g. a resource that failed), "failed_requests" (requests that failed or got
    an HTTP error status), "requests" (the URL of every request the page made, data: URIs
    included), and what the page holds once its load event fired: "title", "images"
    (src's first 60 characters, naturalWidth, complete), "cells" (every `[data-column]`
    cell in a `tr[data-epoch]`: epoch, column, value, text), "links" (every href),
    "viewport_width", "page_width" and "page_height" (CSS pixels). With `screenshot`, a
    full-page PNG is written there. Raises `BrowserError` when no Chromium is installed or
    the page is not loaded within `timeout` seconds (wall clock, start-up included).
    """
    executable = chromium_path()
    if executable is None:
        raise BrowserError("no Chromium is installed (apt-get install -y chromium)")
    url = pathlib.Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="report-browser-")
    log_path = os.path.join(profile, "chromium-stderr.log")
    browser = None
    try:
        browser = _Browser(executable, profile, log_path, time.monotonic() + timeout)
        return browser.load(url, screenshot, width, height)
    except (BrowserError, OSError) as error:
        raise BrowserError(f"{error}\n--- Chromium's stderr, last lines:\n"
                           f"{_tail(log_path)}") from None
    finally:
        if browser is not None:
            browser.close()
        shutil.rmtree(profile, ignore_errors=True)


def _tail(path, lines=30):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]) or "(empty)"
    except OSError:
        return "(none written)"


class _Browser:
    """One Chromium process and its two pipes; one page target attached in flat mode."""

    def __init__(self, executable, profile, log_path, deadline):
        self.deadline = deadline
        self.next_id = 0
        self.buffer = b""
        self.events = []  # (method, params) of every event received, in order
        self.session = None
        command_read, self.command_write = os.pipe()
        self.reply_read, reply_write = os.pipe()
        # posix_spawn rather than subprocess: the pipes must become exactly descriptors 3
        # and 4 in the child, which pass_fds cannot do (it keeps the parent's numbers),
        # and a preexec_fn is unsafe in a process with threads (TensorFlow's, in pytest).
        # Copies above 9 first, so that moving one onto 3 or 4 never overwrites the other.
        child_ends = [_high_copy(command_read), _high_copy(reply_write)]
        os.close(command_read)
        os.close(reply_write)
        arguments = [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        try:
            self.pid = os.posix_spawn(executable, arguments, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, child_ends[0], 3),
                (os.POSIX_SPAWN_DUP2, child_ends[1], 4),
            ], setsid=True)  # its own process group: renderers and all are killed together
        except OSError:
            self._close_pipes()
            raise
        finally:
            for descriptor in child_ends:
                os.close(descriptor)

    # -- the page ----------------------------------------------------------------------

    def load(self, url, screenshot, width, height):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()  # about:blank's events are not the page's
        navigation = self.call("Page.navigate", {"url": url})
        if navigation.get("errorText"):
            raise BrowserError(f"could not open {url}: {navigation['errorText']}")
        self.wait_for_event("Page.loadEventFired")
        facts = self.evaluate(PAGE_FACTS)
        if screenshot is not None:
            self.save_screenshot(screenshot, width, facts["page_height"])
        return {"url": url, **self.report_events(), **facts}

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"the page facts could not be read: {result['exceptionDetails']}")
        return result["result"]["value"]

    def save_screenshot(self, path, width, page_height):
        # A viewport as tall as the page: then one capture holds all of it.
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": min(page_height, MAX_SCREENSHOT_HEIGHT),
            "deviceScaleFactor": 1, "mobile": False})
        data = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})["data"]
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(data))

    def report_events(self):
        """Exceptions, console errors, requests and failures, from the events so far."""
        report = {"exceptions": [], "console_errors": [], "failed_requests": [], "requests": []}
        urls = {}  # request id -> URL, since a failure names only the id
        for method, params in self.events:
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                report["exceptions"].append(
                    details.get("exception", {}).get("description") or details.get("text"))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                report["console_errors"].append(" ".join(
                    str(argument.get("value", argument.get("description", "")))
                    for argument in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                report["console_errors"].append(f"{entry.get('url', '')}: {entry['text']}")
            elif method == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
                report["requests"].append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                report["failed_requests"].append(
                    f"{urls.get(params['requestId'], '?')}: {params['errorText']}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                response = params["response"]
                report["failed_requests"].append(f"{response['url']}: HTTP {response['status']}")
        return report

    # -- the protocol ------------------------------------------------------------------

    def call(self, method, params=None):
        """Send one command (to the page's session once attached) and return its result."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        payload = json.dumps(message).encode("utf-8") + b"\0"
        while payload:
            payload = payload[os.write(self.command_write, payload):]
        while True:
            reply = self.receive(f"the reply to {method}")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply["result"]

    def wait_for_event(self, method):
        while not any(name == method for name, _ in self.events):
            self.receive(method)

    def receive(self, awaited):
        """The next message; an event is also recorded in `self.events`."""
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"timed out waiting for {awaited}")
            readable, _, _ = select.select([self.reply_read], [], [], left)
            if readable:
                chunk = os.read(self.reply_read, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited while waiting for {awaited}")
                self.buffer += chunk
        text, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(text)
        if "method" in message:
            self.events.append((message["method"], message.get("params", {})))
        return message

    def close(self):
        """Kill the browser and every process it started, and reap it."""
        self._close_pipes()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def _close_pipes(self):
        for descriptor in (self.command_write, self.reply_read):
            try:
                os.close(descriptor)
            except OSError:
                pass  # already closed


def _high_copy(descriptor):
    """A non-inheritable duplicate of `descriptor` numbered 10 or above."""
    return fcntl.fcntl(descriptor, fcntl.F_DUPFD_CLOEXEC, 10)
