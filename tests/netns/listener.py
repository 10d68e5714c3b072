"""A TCP and UDP listener for the init-iptables namespace test: answers every HTTP request
with `<name> <original destination>`, the destination read with SO_ORIGINAL_DST (IPv4) or
IP6T_SO_ORIGINAL_DST (IPv6) — what a transparent proxy recovers after an iptables REDIRECT —
or `-` when nothing was redirected; answers every UDP datagram with `<name> udp`.

    python3 listener.py NAME HOSTS PORT [PORT...]     # HOSTS: comma-separated addresses
                                                      # prints "ready" once listening
"""
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST, at level IPPROTO_IPV6


def original_destination(conn):
    try:
        if conn.family == socket.AF_INET6:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, addr = struct.unpack("!2xH4x16s4x", raw)
            return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack("!2xH4s8x", raw)
        return f"{socket.inet_ntoa(addr)}:{port}"
    except OSError:
        return "-"


def serve_tcp(name, sock):
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


def serve_udp(name, sock):
    while True:
        _, peer = sock.recvfrom(2048)
        try:
            sock.sendto(f"{name} udp".encode(), peer)
        except OSError:
            pass


def bind(host, port, kind):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


def main():
    name, hosts, ports = sys.argv[1], sys.argv[2].split(","), [int(p) for p in sys.argv[3:]]
    threads = []
    for host in hosts:
        for port in ports:
            tcp = bind(host, port, socket.SOCK_STREAM)
            tcp.listen(16)
            udp = bind(host, port, socket.SOCK_DGRAM)
            for target, sock in ((serve_tcp, tcp), (serve_udp, udp)):
                t = threading.Thread(target=target, args=(name, sock), daemon=True)
                t.start()
                threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
