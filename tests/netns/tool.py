"""A tool for the transparent-capture tests: answers every request with JSON describing what
it received (method, target, headers, whether over TLS, the port), on plain HTTP and HTTPS
ports, IPv4 and IPv6, and appends the same JSON as one line to a log file, so a test can
prove what reached each port — including a port nothing should reach.

    python3 tool.py --hosts 0.0.0.0,:: --http 80,8080 --https 443 --cert C --key K --log F
                                                     # prints "ready" once listening
"""
import argparse
import http.server
import json
import socket
import ssl
import threading

LOCK = threading.Lock()


def handler(log, port, tls):
    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            seen = {
                "tool": True,
                "port": port,
                "method": self.command,
                "target": self.path,
                "tls": tls,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            with LOCK, open(log, "a") as f:
                f.write(json.dumps(seen) + "\n")
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = answer

        def log_message(self, *args):
            pass

    return Echo


def server(host, port, tls, args):
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def server_bind(self):
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    s = Server((host, port), handler(args.log, port, tls))
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        s.socket = context.wrap_socket(s.socket, server_side=True)
    return s


def ports(text):
    return [int(p) for p in text.split(",") if p]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", default="0.0.0.0")
    p.add_argument("--http", type=ports, default=[])
    p.add_argument("--https", type=ports, default=[])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--log", required=True)
    args = p.parse_args()
    servers = []
    for host in args.hosts.split(","):
        servers += [server(host, port, False, args) for port in args.http]
        servers += [server(host, port, True, args) for port in args.https]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
