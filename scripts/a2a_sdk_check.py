#!/usr/bin/env python3
"""Drives the official A2A SDK client (PyPI `a2a-sdk`) through the example gateway.

A small A2A agent (protocol 1.0 card, JSON-RPC SendMessage and SendStreamingMessage over SSE) runs
on a loopback port; the gateway runs as a process; the SDK discovers the agent *through the
gateway*, sends a message, streams one, and meets the 402 once the workspace is over budget.

usage: a2a_sdk_check.py PATH_TO_GATEWAY_BINARY
Prints one line per check and a closing "N passed, M failed" line; exits non-zero on failure.
"""
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer

import httpx
from a2a.client import A2AClientError, ClientConfig, create_client
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import Role, SendMessageRequest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_agent import SPACING, Agent  # noqa: E402

ADMIN = "sdk-check-admin"


def admin(gateway, method, path, body=None):
    req = urllib.request.Request(gateway + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())


def start_gateway(binary):
    proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--admin-token", ADMIN],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split()[2]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the gateway did not start")


async def checks(gateway, agent_url):
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + str(detail)}", flush=True)

    admin(gateway, "POST", "/registry/register", {"workspace_id": "sdk-ws", "url": agent_url})
    base = f"{gateway}/workspaces/sdk-ws/a2a"
    async with httpx.AsyncClient(timeout=20) as http:
        client = await create_client(base, client_config=ClientConfig(streaming=False, httpx_client=http))
        card = client._card  # what the SDK resolved through the gateway
        urls = [i.url for i in card.supported_interfaces]
        check("discovery: the card advertises only the gateway", urls == [base + "/"], urls)

        request = SendMessageRequest(message=new_text_message("hello", role=Role.ROLE_USER))
        replies = [r async for r in client.send_message(request)]
        text = replies[0].message.parts[0].text if replies else None
        check("message through the gateway", text == "echo: hello", replies)

        streaming = await create_client(base, client_config=ClientConfig(streaming=True, httpx_client=http))
        arrivals, states = [], []
        async for event in streaming.send_message(SendMessageRequest(message=new_text_message("stream", role=Role.ROLE_USER))):
            arrivals.append(time.monotonic())
            states.append(event.task.status.state if event.HasField("task") else event.status_update.status.state)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        check("streamed message: 3 events", len(arrivals) == 3, states)
        check("streamed events arrive spaced, not buffered", all(g >= SPACING / 2 for g in gaps), gaps)

        admin(gateway, "PATCH", "/workspaces/sdk-ws/budget", {"budget_limits": {"hourly": 0}})
        try:
            _ = [r async for r in client.send_message(request)]
            check("over budget: the SDK sees 402", False, "the call went through")
        except A2AClientError as e:
            check("over budget: the SDK sees 402", "402" in str(e), e)
        card_again = await http.get(base + "/.well-known/agent-card.json")
        check("over budget: discovery still works", card_again.status_code == 200, card_again.status_code)
    return results


def main():
    binary = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc, gateway = start_gateway(binary)
    try:
        results = asyncio.run(checks(gateway, f"http://127.0.0.1:{server.server_port}/agent"))
    finally:
        proc.terminate()
        proc.wait(timeout=40)
        server.shutdown()
    passed, failed = results.count(True), results.count(False)
    print(f"a2a-sdk: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
