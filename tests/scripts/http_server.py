#!/usr/bin/python3
"""HTTP server for netnat's data-path tests.

usage: http_server.py BIND_ADDR PORT LOGFILE [LIFETIME_S]

Answers every GET with `peer=<ip> <port>`, the client address it saw, and appends the same
line to LOGFILE. Stops by itself after LIFETIME_S seconds (default 300).
"""
import http.server
import socket
import sys
import threading

addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lifetime = float(sys.argv[4]) if len(sys.argv) > 4 else 300.0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        peer = f"{self.client_address[0]} {self.client_address[1]}"
        with open(log, "a") as f:
            f.write(f"peer={peer} path={self.path}\n")
        body = f"peer={peer}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("http: " + (fmt % args) + "\n")


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    allow_reuse_address = True


srv = Server((addr, port), Handler)
timer = threading.Timer(lifetime, srv.shutdown)
timer.daemon = True
timer.start()
print(f"listening on {addr} {port}", flush=True)
srv.serve_forever()
