#!/usr/bin/env python3
"""A Slack-style receiver for tower-budget alerts: verifies the signature, de-duplicates by id,
and posts one line to a Slack incoming webhook (or any URL taking {"text": ...}).

    GATEWAY_ALERT_SECRET=... SLACK_WEBHOOK_URL=https://hooks.slack.com/services/... \
        python3 scripts/alert_relay.py 9911
    # then start the gateway with --alert-webhook http://127.0.0.1:9911/ --alert-secret ...
"""
import collections, hashlib, hmac, json, os, sys, time, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["GATEWAY_ALERT_SECRET"].encode()
SLACK = os.environ["SLACK_WEBHOOK_URL"]
seen = collections.OrderedDict()  # delivery is at least once: the same id may come twice


def verified(header, body):
    """Budget-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">, recent."""
    fields = dict(kv.split("=", 1) for kv in header.split(",") if "=" in kv)
    t, v1 = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit():
        return False
    want = hmac.new(SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(v1.encode(), want.encode()) and abs(time.time() - int(t)) < 300


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not verified(self.headers.get("Budget-Signature", ""), body):
            return self.send_error(401)  # forged, altered or replayed
        e = json.loads(body)
        if e["id"] not in seen:
            usd = lambda cents: "no limit" if cents is None else f"${cents / 100:,.2f}"
            if e["type"] == "budget.threshold_crossed":
                text = f"{e['workspace_id']}: {e['period']} spend {usd(e['spend'])} reached {e['threshold']}% of {usd(e['limit'])}"
            else:
                text = f"{e['workspace_id']}: {e['period']} budget allowed again ({usd(e['spend'])} of {usd(e['limit'])})"
            req = urllib.request.Request(SLACK, json.dumps({"text": text}).encode(), {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5)  # on an error no answer goes back: the gateway retries
            seen[e["id"]] = True  # only once Slack has it
            while len(seen) > 100_000:
                seen.popitem(last=False)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9911), Hook)
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
