"""webtest: a workload for the passthrough tests (standard library only, runs in the guest).

Plain JSON answers, a chunked stream whose last chunk waits for POST /release (and a short one
that ticks three times), an upload that
answers the body's size and sha256, a WebSocket echo written by hand (the handshake of RFC 6455
and its frames: what a browser's DevTools socket speaks), and an OpenAPI document.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RELEASE = threading.Event()
OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "webtest", "version": "1"},
    "paths": {
        "/hello": {"get": {"operationId": "getHello", "summary": "Who asked, and with what"}},
        "/items/{id}": {
            "post": {"operationId": "putItem", "summary": "Store an item (echoed back)"}
        },
        "/status": {"get": {"summary": "Answers ?code= as its status"}},
    },
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/hello":
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._json(200, {"path": url.path, "query": query, "headers": headers})
        elif url.path == "/status":
            self._json(int(query.get("code", "200")), {"code": query.get("code")})
        elif url.path == "/openapi.json":
            self._json(200, OPENAPI)
        elif url.path == "/stream":
            self._stream()
        elif url.path == "/stream-short":
            self._stream_short()
        elif url.path == "/bytes":
            self._bytes(int(query.get("n", "0")))
        elif url.path == "/ws":
            self._websocket()
        else:
            self._json(404, {"error": "webtest: no such path"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        data = self._body()
        if url.path == "/upload":
            self._json(200, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        elif url.path == "/release":
            RELEASE.set()
            self._json(200, {"released": True})
        elif url.path.startswith("/items/"):
            item = {"id": url.path.removeprefix("/items/"), "query": parse_qs(url.query)}
            self._json(201, item | {"body": json.loads(data or b"null")})
        else:
            self._json(404, {"error": "webtest: no such path"})

    def _stream(self) -> None:
        RELEASE.clear()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self._chunk(b"first\n")
        RELEASE.wait(60)  # the last chunk is produced only once the client has the first
        self._chunk(b"last\n")
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _bytes(self, n: int) -> None:
        """n zero bytes (bench.passthrough's download)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.send_header("Connection", "close")
        self.end_headers()
        block = bytes(65536)
        while n > 0:
            self.wfile.write(block[: min(n, len(block))])
            n -= len(block)
        self.close_connection = True

    def _stream_short(self) -> None:
        """Three lines, a quarter second apart (docs/workloads.md's `curl -N`)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for n in range(1, 4):
            self._chunk(b"tick %d\n" % n)
            time.sleep(0.25)
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while (frame := self._frame()) is not None:
            opcode, payload = frame
            if opcode == 8:  # close: answer it and end
                self._send_frame(8, payload[:2])
                break
            if opcode in (1, 2):
                self._send_frame(opcode, payload)
            elif opcode == 9:
                self._send_frame(10, payload)
        self.close_connection = True

    def _frame(self) -> tuple[int, bytes] | None:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(length)
        return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, size)
        elif size < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        print(f"webtest: {self.command} {self.path}", flush=True)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 9100), Handler).serve_forever()
