"""Run Arize Phoenix (`phoenix serve`) on loopback only, for tests/phoenix.rs.

Phoenix binds its OTLP/gRPC listener on every interface ("[::]:PORT"); tests stay on
127.0.0.1, so the address is rewritten before the server binds it. Everything else is
Phoenix's own `phoenix serve`, configured by the environment the test sets
(PHOENIX_WORKING_DIR, PHOENIX_HOST, PHOENIX_PORT, PHOENIX_GRPC_PORT).
"""
import sys

import grpc.aio._server as aio_server

_add_insecure_port = aio_server.Server.add_insecure_port


def _loopback(self, address):
    return _add_insecure_port(self, address.replace("[::]", "127.0.0.1"))


aio_server.Server.add_insecure_port = _loopback

from phoenix.server.main import main  # noqa: E402  (after the patch)

if __name__ == "__main__":
    sys.argv = ["phoenix", "serve"]
    sys.exit(main())
