#!/usr/bin/env python3
"""The budget page (/ui) in headless Chromium, driven through chromedriver's W3C WebDriver API.
Standard library only.

Starts the gateway, registers a workspace over its hourly limit, then as an operator would:
types the admin token, loads workspaces, reads the period rows (order, text, progress bars and
their ARIA attributes, the over-limit mark), is refused an invalid limit before any request,
saves a valid one (one PATCH), and sees an API error reported.

usage: ui_check.py GATEWAY_BINARY [SCREENSHOT.png]
"""
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ADMIN = "ui-check-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=10):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def poll(what, fn, seconds=20):
    """Calls fn until it returns a truthy value; fails after the deadline. No fixed sleeps."""
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Browser:
    def __init__(self):
        self.port = free_port()
        self.driver = subprocess.Popen(["chromedriver", f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        poll("chromedriver", lambda: self._status_ok())
        self.profile = tempfile.mkdtemp(prefix="ui-check-")
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--window-size=1100,800"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}
        status, value = http("POST", self.base + "/session", caps, timeout=60)
        assert status == 200, value
        self.session = value["value"]["sessionId"]

    def _status_ok(self):
        try:
            return http("GET", self.base + "/status", timeout=2)[1]["value"]["ready"]
        except OSError:
            return False

    def cmd(self, method, path, body=None):
        status, value = http(method, f"{self.base}/session/{self.session}{path}", body, timeout=30)
        if status != 200:
            raise AssertionError(f"webdriver {path}: {value}")
        return value["value"]

    def go(self, url):
        self.cmd("POST", "/url", {"url": url})

    def js(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css):
        element = self.cmd("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(element.values()))

    def type(self, css, text, clear=True):
        el = self.find(css)
        if clear:
            self.cmd("POST", f"/element/{el}/clear", {})
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def click(self, css):
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.cmd("GET", "/screenshot")))

    def close(self):
        try:
            http("DELETE", f"{self.base}/session/{self.session}", timeout=10)
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=10)


ROWS_JS = """
return [...document.querySelectorAll('#rows tr')].map(tr => {
  const bar = tr.querySelector('[role=progressbar]');
  return {period: tr.dataset.period, over: tr.classList.contains('over'),
          input: tr.querySelector('input').value, inputLabel: tr.querySelector('input').getAttribute('aria-label'),
          text: tr.querySelector('.text').textContent, error: tr.querySelector('.error').textContent,
          now: bar.getAttribute('aria-valuenow'), min: bar.getAttribute('aria-valuemin'),
          max: bar.getAttribute('aria-valuemax'), label: bar.getAttribute('aria-label')};
});"""


def main():
    binary = sys.argv[1]
    shot = sys.argv[2] if len(sys.argv) > 2 else None
    gw = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--admin-token", ADMIN],
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = poll("gateway", lambda: gw.stdout.readline(), 60)
    while not line.startswith("listening on "):
        line = gw.stdout.readline()
    base = line.split()[2]
    results = []

    def check(name, ok, detail=""):
        results.append(bool(ok))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + str(detail)}", flush=True)

    browser = None
    try:
        for ws in ["alpha", "beta"]:
            status, reg = http("POST", base + "/registry/register", {"workspace_id": ws, "url": "http://127.0.0.1:9/a"}, ADMIN)
            assert status == 200, reg
        http("PATCH", base + "/workspaces/alpha/budget", {"budget_limits": {"hourly": 1000, "monthly": 0}}, ADMIN)
        token = http("POST", base + "/registry/register", {"workspace_id": "alpha", "url": "http://127.0.0.1:9/a"}, ADMIN)[1]["token"]
        http("POST", base + "/registry/heartbeat", {"workspace_id": "alpha", "monthly_spend": 1250}, token)

        browser = Browser()
        browser.go(base + "/ui")
        browser.type("#token", ADMIN)
        browser.click("#connect")
        rows = poll("period rows", lambda: browser.js(ROWS_JS))
        options = browser.js("return [...document.querySelectorAll('#workspace option')].map(o => o.value)")
        check("workspaces listed in id order", options == ["alpha", "beta"], options)
        check("one row per period, in the API's order", [r["period"] for r in rows] == ["hourly", "daily", "weekly", "monthly"], rows)
        hourly, daily, monthly = rows[0], rows[1], rows[3]
        check("limit input in USD", hourly["input"] == "10.00" and daily["input"] == "" and monthly["input"] == "0.00", rows)
        check("spend / limit as text", hourly["text"] == "$12.50 / $10.00" and daily["text"] == "$12.50 / no limit", rows)
        check("progress bar ARIA", (hourly["now"], hourly["min"], hourly["max"]) == ("1000", "0", "1000")
              and hourly["label"] == "hourly budget used" and daily["max"] == "0", hourly)
        check("inputs labelled by period", hourly["inputLabel"] == "hourly limit in USD", hourly)
        check("over-limit rows marked (hourly over, 0 blocks all)", [r["over"] for r in rows] == [True, False, False, True], rows)
        if shot:
            browser.screenshot(shot)

        # Invalid input is refused before any request.
        browser.js("window.__fetches = 0; const f = window.fetch; window.fetch = (...a) => { window.__fetches++; return f(...a); };")
        browser.type('tr[data-period="daily"] input', "-5")
        browser.click("#save")
        err = poll("row error", lambda: browser.js("return document.querySelector('tr[data-period=daily] .error').textContent"))
        check("invalid input: error next to the row", "USD" in err, err)
        check("invalid input: no request sent", browser.js("return window.__fetches") == 0)
        browser.type('tr[data-period="daily"] input', "abc")
        browser.click("#save")
        check("not a number: no request sent", browser.js("return window.__fetches") == 0)

        # A valid change: one PATCH, the page shows the new state.
        browser.type('tr[data-period="daily"] input', "20.5")
        browser.type('tr[data-period="hourly"] input', "")
        browser.click("#save")
        saved = poll("saved", lambda: browser.js("return document.getElementById('status').textContent") == "Saved.")
        check("save: one PATCH", saved and browser.js("return window.__fetches") == 1)
        status, budget = http("GET", base + "/workspaces/alpha/budget", token=ADMIN)
        check("save: limits stored (daily $20.50, hourly cleared)",
              budget["periods"]["daily"]["limit"] == 2050 and budget["periods"]["hourly"]["limit"] is None, budget)
        rows = browser.js(ROWS_JS)
        check("page re-rendered from the answer", rows[0]["text"] == "$12.50 / no limit" and not rows[0]["over"], rows[0])

        # An API error is shown: the workspace was removed meanwhile.
        http("DELETE", base + "/workspaces/alpha", token=ADMIN)
        browser.type('tr[data-period="weekly"] input', "1")
        browser.click("#save")
        msg = poll("API error", lambda: browser.js("return document.getElementById('status').textContent"))
        check("API error shown", "not found" in msg, msg)
    finally:
        if browser:
            browser.close()
        gw.terminate()
        gw.wait(timeout=40)
    passed, failed = results.count(True), results.count(False)
    print(f"ui: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
