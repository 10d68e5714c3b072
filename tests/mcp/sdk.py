"""The official MCP Python SDK on both sides of toolgate (driven by tests/mcp.rs).

  python3 sdk.py server PORT RECORD   # an MCPServer on 127.0.0.1:PORT (streamable HTTP, /mcp);
                                      # every tool call it runs is appended to RECORD
  python3 sdk.py client URL [MODE]    # mcp.Client to URL, through HTTP_PROXY; prints a JSON
                                      # report of what it could do. MODE: auto (default:
                                      # probes server/discover), legacy (the 2025 initialize
                                      # handshake) or 2026-07-28 (stateless, no probe)

scripts/test.sh installs the SDK (PyPI `mcp`, 2.x).
"""

import asyncio
import json
import sys


def server(port: int, record: str) -> None:
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("crm")

    def note(line: str) -> None:
        with open(record, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    @app.tool()
    def search(query: str) -> str:
        """Search customers."""
        note(f"search {query}")
        return f"found 2 customers matching {query}"

    @app.tool()
    def delete_customer(customer: str) -> str:
        """Delete a customer."""
        note(f"delete_customer {customer}")
        return f"deleted {customer}"

    app.run("streamable-http", host="127.0.0.1", port=port)


async def client(url: str, mode: str) -> dict:
    from mcp import Client

    report: dict = {}
    async with Client(url, mode=mode) as c:
        report["protocol"] = c.session.protocol_version
        tools = await c.list_tools()
        report["tools"] = sorted(t.name for t in tools.tools)
        found = await c.call_tool("search", {"query": "acme"})
        report["search"] = {
            "is_error": bool(found.is_error),
            "text": [getattr(b, "text", None) for b in found.content],
        }
        try:
            denied = await c.call_tool("delete_customer", {"customer": "acme"})
            report["delete"] = {
                "is_error": bool(denied.is_error),
                "text": [getattr(b, "text", None) for b in denied.content],
            }
        except Exception as e:  # the SDK raises on a JSON-RPC error
            error = getattr(e, "error", None)
            report["delete"] = {
                "raised": type(e).__name__,
                "message": getattr(error, "message", str(e)),
                "code": getattr(error, "code", None),
                "data": getattr(error, "data", None),
            }
    return report


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), sys.argv[3])
    else:
        mode = sys.argv[3] if len(sys.argv) > 3 else "auto"
        print(json.dumps(asyncio.run(client(sys.argv[2], mode))), flush=True)
