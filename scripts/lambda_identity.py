#!/usr/bin/env python3
"""An identity Firehose transform function over HTTP, for benchmarks: every record comes back
`Ok` with its data unchanged (the base64 text is passed through, not decoded). Standard library
only. Usage: scripts/lambda_identity.py PORT  (prints "listening on PORT" once ready)."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        event = json.loads(self.rfile.read(length))
        answer = json.dumps(
            {"records": [{"recordId": r["recordId"], "result": "Ok", "data": r["data"]} for r in event["records"]]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"listening on {sys.argv[1]}", flush=True)
    server.serve_forever()
