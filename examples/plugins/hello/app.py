"""hello: the example plugin's workload, a tiny HTTP app (standard library only).

Shipped in the plugin's own initramfs, hello.cpio, at /opt/volant/plugins/hello/app.py; it runs
on the agent image's python3. Environment:
HELLO_PORT (default 9000), HELLO_NAME (what it greets with), HELLO_UNHEALTHY=1 (its health check
always fails: a workload that never gets healthy).
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("HELLO_NAME", "hello")
UNHEALTHY = os.environ.get("HELLO_UNHEALTHY") == "1"

# What the manifest's `openapi: /openapi.json` points at; volantd serves it for each VM.
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "hello", "version": "0.1.0"},
    "paths": {
        "/greet": {"get": {"summary": "A greeting and the workload's pid"}},
        "/echo": {"post": {"summary": "The request body, echoed"}},
        "/health": {"get": {"summary": "200 while healthy"}},
    },
}


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(503 if UNHEALTHY else 200, {"healthy": not UNHEALTHY})
        elif self.path == "/openapi.json":
            self._send(200, OPENAPI)
        elif self.path.startswith("/greet"):
            self._send(200, {"greeting": f"hello from {NAME}", "pid": os.getpid()})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self.path == "/echo":
            self._send(200, {"echo": data.decode(errors="replace")})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stdout: the agent's log stream shows it.
        print(f"hello: {self.command} {self.path}", flush=True)


def main() -> None:
    port = int(os.environ.get("HELLO_PORT", "9000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"hello: {NAME} listening on 127.0.0.1:{port}", flush=True)
    print("hello: stderr works too", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
