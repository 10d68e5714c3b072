"""Send one UDP datagram and report what happened, for the capture tests:

    python3 udp.py HOST PORT     # prints "reply <text>", "error <reason>" or "timeout"

A datagram refused by an iptables REJECT or DROP in OUTPUT fails at send (EPERM) or draws
an ICMP error (ECONNREFUSED on the next receive); a delivered one gets the listener's reply.
"""
import socket
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        sock.connect((host, port))
        sock.send(b"quic?")
        print("reply", sock.recv(2048).decode(), flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except OSError as e:
        print("error", e.strerror, flush=True)


if __name__ == "__main__":
    main()
