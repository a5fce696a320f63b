"""The upstream for run.sh: answers every GET with 200 and a JSON body listing the request
headers it received ({"path": ..., "headers": [[name, value], ...]}, names lowercased, in
order), and sets two response headers: x-upstream: python and x-upstream-secret: 1 (which the
processor removes). Each request's path is appended to the file named by argv[2].

    upstream.py PORT PATHS_FILE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATHS_FILE = sys.argv[2]


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with open(PATHS_FILE, "a") as f:
            f.write(self.path + "\n")
        body = json.dumps(
            {"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", "python")
        self.send_header("x-upstream-secret", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
