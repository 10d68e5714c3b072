"""A tool for the transparent-capture test: answers every request with JSON describing what
it received (method, target, headers), on plain HTTP and on HTTPS.

    python3 tool.py HOST HTTP_PORT HTTPS_PORT CERT KEY     # prints "ready" once listening
"""
import http.server
import json
import ssl
import sys
import threading


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "tool": True,
            "method": self.command,
            "target": self.path,
            "tls": isinstance(self.connection, ssl.SSLSocket),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


def main():
    host, http_port, https_port, cert, key = sys.argv[1:6]
    plain = http.server.ThreadingHTTPServer((host, int(http_port)), Echo)
    secure = http.server.ThreadingHTTPServer((host, int(https_port)), Echo)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
