#!/usr/bin/env python3
"""A toy A2A agent for trying the gateway: a protocol 1.0 agent card, JSON-RPC `SendMessage`
(echoes the text) and `SendStreamingMessage` (three SSE events, 0.3 s apart). Standard library only.

usage: toy_agent.py PORT      → serves http://127.0.0.1:PORT/agent
With TOY_AGENT_KEEP_ALIVE_HEADERS=1 its JSON answers carry `Connection: keep-alive` and
`Keep-Alive: timeout=5`, as Node.js servers send them (nginx sends the first).
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPACING = 0.3
KEEP_ALIVE_HEADERS = os.environ.get("TOY_AGENT_KEEP_ALIVE_HEADERS") == "1"


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY the body waits for the
    # peer's delayed ACK (~40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def base(self):
        return f"http://127.0.0.1:{self.server.server_port}/agent"

    def send_json(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if KEEP_ALIVE_HEADERS and not self.close_connection:
            self.send_header("Connection", "keep-alive")
            self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/agent/.well-known/agent-card.json":
            self.send_json({
                "name": "sdk check agent",
                "description": "echoes",
                "version": "1.0.0",
                "supportedInterfaces": [
                    {"url": self.base() + "/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                    {"url": "127.0.0.1:1", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
                ],
                "capabilities": {"streaming": True},
                "defaultInputModes": ["text/plain"],
                "defaultOutputModes": ["text/plain"],
                "skills": [],
            })
        else:
            self.send_json({"error": "not found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        rpc = json.loads(self.rfile.read(length) or b"{}")
        rid, method = rpc.get("id"), rpc.get("method")
        text = rpc.get("params", {}).get("message", {}).get("parts", [{}])[0].get("text", "")
        reply = {"messageId": "a1", "role": "ROLE_AGENT", "parts": [{"text": "echo: " + text}]}
        if method == "SendMessage":
            self.send_json({"jsonrpc": "2.0", "id": rid, "result": {"message": reply}})
        elif method == "SendStreamingMessage":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            events = [
                {"task": {"id": "t1", "contextId": "c1", "status": {"state": "TASK_STATE_SUBMITTED"}}},
                {"statusUpdate": {"taskId": "t1", "contextId": "c1",
                                  "status": {"state": "TASK_STATE_WORKING", "message": reply}}},
                {"statusUpdate": {"taskId": "t1", "contextId": "c1", "status": {"state": "TASK_STATE_COMPLETED"}}},
            ]
            for i, event in enumerate(events):
                if i:
                    time.sleep(SPACING)
                body = json.dumps({"jsonrpc": "2.0", "id": rid, "result": event})
                self.wfile.write(f"data: {body}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
        else:
            self.send_json({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "method not found"}})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9901
    server = ThreadingHTTPServer(("127.0.0.1", port), Agent)
    print(f"toy agent on http://127.0.0.1:{server.server_port}/agent", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
