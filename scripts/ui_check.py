#!/usr/bin/env python3
"""The budget page (/ui) in headless Chromium, driven through chromedriver's W3C WebDriver API.
Standard library only.

Starts the gateway, registers four workspaces at different uses of their limits, then as an
operator would: types the admin token; reads the overview (sorted by use, re-sorted by id,
filtered, unblock times and forecasts); opens a workspace with the keyboard; reads its period
rows (order, text, progress bars and their ARIA attributes, the over-limit mark), its thresholds
and its spend chart (bar count and total, hourly and daily, with its text alternative); checks
both views fit a 390-pixel-wide screen; is refused invalid limits and thresholds before any
request; saves valid ones (one PATCH); sees no console errors, then an API error reported.
Screenshots of each view at 1280x800 and 390 px go to SCREENSHOT_DIR (default target/ui).

usage: ui_check.py GATEWAY_BINARY [SCREENSHOT_DIR]
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
                "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--window-size=1280,800"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:loggingPrefs": {"browser": "ALL"},
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


OVERVIEW_JS = """
return [...document.querySelectorAll('#workspaces tr')].map(tr => ({
  id: tr.dataset.workspace, use: tr.querySelector('.use').textContent,
  exceeded: tr.querySelector('.exceeded span:last-child').textContent,
  forecast: tr.querySelector('td.forecast span:last-child').textContent}));"""

CHART_JS = """
const svg = document.querySelector('#chart-svg svg');
if (!svg) return null;
const bars = [...svg.querySelectorAll('rect.spend')];
return {bars: bars.length, sum: bars.reduce((s, r) => s + Number(r.dataset.spend), 0),
        total: svg.dataset.total, label: svg.getAttribute('aria-label'),
        summary: document.getElementById('chart-summary').textContent,
        tableRows: document.querySelectorAll('#chart-table tr').length};"""

# Nothing wider than the window: not the page, and no table scrolling sideways inside its box.
NO_OVERFLOW_JS = """
const visible = [...document.querySelectorAll('.scroll')].filter(e => e.offsetParent !== null);
return document.documentElement.scrollWidth <= window.innerWidth + 1
  && visible.every(e => e.scrollWidth <= e.clientWidth + 1);"""


def main():
    binary = sys.argv[1]
    shots = sys.argv[2] if len(sys.argv) > 2 else "target/ui"
    os.makedirs(shots, exist_ok=True)
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

    def spend(ws, cents, limits):
        token = http("POST", base + "/registry/register", {"workspace_id": ws, "url": "http://127.0.0.1:9/a"}, ADMIN)[1]["token"]
        if limits:
            status, body = http("PATCH", base + f"/workspaces/{ws}/budget", {"budget_limits": limits}, ADMIN)
            assert status == 200, body
        if cents:
            status, body = http("POST", base + "/registry/heartbeat", {"workspace_id": ws, "monthly_spend": cents}, token)
            assert status == 200, body

    browser = None
    try:
        # alpha: over its hourly limit and blocked by a monthly 0; delta at 90 %; gamma at 40 %
        # and spending toward its daily limit; beta without limits.
        spend("alpha", 1250, {"hourly": 1000, "monthly": 0})
        spend("beta", 0, None)
        spend("gamma", 2000, {"daily": 5000})
        spend("delta", 900, {"weekly": 1000})

        browser = Browser()
        browser.go(base + "/ui")
        browser.type("#token", ADMIN)
        browser.click("#connect")
        overview = poll("overview rows", lambda: browser.js(OVERVIEW_JS))
        check("overview sorted by highest use", [r["id"] for r in overview] == ["alpha", "delta", "gamma", "beta"], overview)
        check("overview shows use", [r["use"] for r in overview] == ["125 %", "90 %", "40 %", "no limit"], overview)
        alpha = overview[0]
        check("exceeded periods and when they unblock",
              alpha["exceeded"].startswith("hourly: ") and any(t in alpha["exceeded"] for t in ("59 min", "1 h"))
              and "monthly: until the limit is raised" in alpha["exceeded"], alpha)
        check("forecast (gamma spends 20 $/h toward 50 $/day)", overview[2]["forecast"].startswith("daily in 1 h"), overview[2])
        check("no forecast without limits", overview[3]["forecast"] == "—" and overview[3]["exceeded"] == "—", overview[3])
        browser.click('th[data-sort="id"] button')
        order = [r["id"] for r in browser.js(OVERVIEW_JS)]
        sort_attr = browser.js("return document.querySelector('th[data-sort=id]').getAttribute('aria-sort')")
        check("sortable by id", order == ["alpha", "beta", "delta", "gamma"] and sort_attr == "ascending", (order, sort_attr))
        browser.click('th[data-sort="use"] button')
        order = [r["id"] for r in browser.js(OVERVIEW_JS)]
        check("sorted by use again", order == ["alpha", "delta", "gamma", "beta"], order)
        browser.type("#filter", "ta")
        order = [r["id"] for r in browser.js(OVERVIEW_JS)]
        check("filterable by id", order == ["delta", "beta"], order)
        browser.type("#filter", "")
        browser.js("document.getElementById('filter').dispatchEvent(new Event('input'))")
        check("filter cleared", len(browser.js(OVERVIEW_JS)) == 4)
        browser.screenshot(os.path.join(shots, "overview.png"))

        # Open alpha with the keyboard: Enter on its button.
        el = browser.find('#workspaces tr[data-workspace="alpha"] button')
        browser.cmd("POST", f"/element/{el}/value", {"text": "\ue007"})
        rows = poll("period rows", lambda: browser.js("return document.getElementById('detail').hidden ? null : true") and browser.js(ROWS_JS))
        check("workspace opened with the keyboard",
              browser.js("return document.activeElement.id") == "detail-title", browser.js("return document.activeElement.outerHTML"))
        check("one row per period, in the API's order", [r["period"] for r in rows] == ["hourly", "daily", "weekly", "monthly"], rows)
        hourly, daily, monthly = rows[0], rows[1], rows[3]
        check("limit input in USD", hourly["input"] == "10.00" and daily["input"] == "" and monthly["input"] == "0.00", rows)
        check("spend / limit as text", hourly["text"] == "$12.50 / $10.00" and daily["text"] == "$12.50 / no limit", rows)
        check("progress bar ARIA", (hourly["now"], hourly["min"], hourly["max"]) == ("1000", "0", "1000")
              and hourly["label"] == "hourly budget used" and daily["max"] == "0", hourly)
        check("inputs labelled by period", hourly["inputLabel"] == "hourly limit in USD", hourly)
        check("over-limit rows marked (hourly over, 0 blocks all)", [r["over"] for r in rows] == [True, False, False, True], rows)
        check("thresholds shown", browser.js("return document.getElementById('thresholds').value") == "80, 100")
        chart = poll("hourly chart", lambda: browser.js(CHART_JS))
        check("hourly chart: 7 days and the current hour = 169 bars, total $12.50",
              chart["bars"] == 169 and chart["sum"] == 1250 and chart["total"] == "1250", chart)
        check("chart text alternative", "$12.50" in chart["label"] and chart["label"] == chart["summary"]
              and chart["tableRows"] == 169, chart)
        browser.click('input[name=step][value=day]')
        chart = poll("daily chart", lambda: (c := browser.js(CHART_JS)) and c["bars"] == 31 and c)
        check("daily chart: 30 days and today = 31 bars, total $12.50", chart["sum"] == 1250, chart)
        browser.click('input[name=step][value=hour]')
        poll("hourly chart again", lambda: (c := browser.js(CHART_JS)) and c["bars"] == 169)
        browser.screenshot(os.path.join(shots, "workspace.png"))
        browser.js("document.getElementById('chart').scrollIntoView()")
        browser.screenshot(os.path.join(shots, "workspace-chart.png"))
        browser.js("window.scrollTo(0, 0)")

        # A phone: 390 pixels wide, nothing wider than the screen.
        browser.cmd("POST", "/window/rect", {"width": 390, "height": 844})
        poll("narrow window", lambda: browser.js("return window.innerWidth <= 400"))
        check("workspace view fits 390 px", browser.js(NO_OVERFLOW_JS), browser.js("return document.documentElement.scrollWidth"))
        browser.screenshot(os.path.join(shots, "workspace-phone.png"))
        browser.click("#back")
        poll("overview again", lambda: browser.js("return !document.getElementById('overview').hidden"))
        check("overview fits 390 px", browser.js(NO_OVERFLOW_JS), browser.js("return document.documentElement.scrollWidth"))
        labels = browser.js("return [...document.querySelectorAll('#workspaces tr:first-child .label')].map(l => l.offsetParent !== null)")
        check("narrow overview labels its cells in text", labels == [True, True], labels)
        browser.screenshot(os.path.join(shots, "overview-phone.png"))
        browser.cmd("POST", "/window/rect", {"width": 1280, "height": 800})
        browser.click('#workspaces tr[data-workspace="alpha"] button')
        poll("period rows", lambda: browser.js("return document.getElementById('detail').hidden ? null : true"))

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
        browser.type('tr[data-period="daily"] input', "20.5")
        browser.type("#thresholds", "0, 50")
        browser.click("#save")
        err = poll("thresholds error", lambda: browser.js("return document.getElementById('thresholds-error').textContent"))
        check("invalid thresholds: error shown, no request sent", "1 to 1000" in err and browser.js("return window.__fetches") == 0, err)

        # A valid change: one PATCH, the page shows the new state.
        browser.type("#thresholds", "90, 50")
        browser.type('tr[data-period="hourly"] input', "")
        browser.click("#save")
        saved = poll("saved", lambda: browser.js("return document.getElementById('status').textContent") == "Saved.")
        check("save: one PATCH", saved and browser.js("return window.__fetches") == 1)
        status, budget = http("GET", base + "/workspaces/alpha/budget", token=ADMIN)
        check("save: limits and thresholds stored (daily $20.50, hourly cleared, [50, 90])",
              budget["periods"]["daily"]["limit"] == 2050 and budget["periods"]["hourly"]["limit"] is None
              and budget["alert_thresholds"] == [50, 90], budget)
        rows = browser.js(ROWS_JS)
        check("page re-rendered from the answer", rows[0]["text"] == "$12.50 / no limit" and not rows[0]["over"]
              and browser.js("return document.getElementById('thresholds').value") == "50, 90", rows[0])
        logs = browser.cmd("POST", "/se/log", {"type": "browser"})
        severe = [entry for entry in logs if entry.get("level") == "SEVERE"]
        check("no console errors", not severe, severe)

        # An API error is shown: the workspace was removed meanwhile.
        http("DELETE", base + "/workspaces/alpha", token=ADMIN)
        browser.type('tr[data-period="weekly"] input', "1")
        browser.click("#save")
        msg = poll("API error", lambda: browser.js("return document.getElementById('status').textContent"))
        check("API error shown", "not found" in msg, msg)
        browser.click("#back")
        order = poll("overview without alpha", lambda: (o := [r["id"] for r in browser.js(OVERVIEW_JS)]) and "alpha" not in o and o)
        check("overview reloaded without the removed workspace", order == ["delta", "gamma", "beta"], order)
    finally:
        if browser:
            browser.close()
        gw.terminate()
        gw.wait(timeout=40)
    passed, failed = results.count(True), results.count(False)
    print(f"ui: {passed} passed, {failed} failed; screenshots in {shots}/")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
