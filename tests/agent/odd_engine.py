"""An engine that answers, but not as vLLM does: a JSON list for /v1/models, non-Prometheus
/metrics. Started by the agent like vLLM (`odd_engine.py MODEL --host H --port P ...`)."""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[]" if self.path == "/v1/models" else b"this is { not prometheus"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    HTTPServer((args.host, args.port), Handler).serve_forever()
