"""A TCP listener for the init-iptables namespace test: answers every HTTP request with
`<name> <original destination>`, the destination read with SO_ORIGINAL_DST (what a
transparent proxy recovers after an iptables REDIRECT), or `-` when nothing was redirected.

    python3 listener.py NAME HOST PORT [PORT...]     # prints "ready" once listening
"""
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80


def original_destination(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return "-"
    port, addr = struct.unpack("!2xH4s8x", raw)
    return f"{socket.inet_ntoa(addr)}:{port}"


def serve(name, sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            request = b""
            try:
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
            except OSError:
                continue
            body = f"{name} {original_destination(conn)}\n".encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                conn.sendall(head + body)
            except OSError:
                pass


def main():
    name, host, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
    threads = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        t = threading.Thread(target=serve, args=(name, sock), daemon=True)
        t.start()
        threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
