// The official MCP TypeScript SDK (@modelcontextprotocol/sdk, the version package-lock.json
// pins) as a client through toolgate, driven by tests/mcp_sdk.rs:
//
//   node client.mjs URL   # connect to URL (streamable HTTP), list tools, call `search`,
//                         # call `delete_customer`; print a JSON report of what happened
//
// Node's fetch does not honour HTTP_PROXY, so URL is toolgate's named route for the tool
// (`routes: [{ prefix: /crm/, tool: crm }]`): the agent calls the sidecar directly.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";

const url = new URL(process.argv[2]);
const client = new Client({ name: "toolgate-test", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: { "x-toolgate-task": "T-ts" } },
});
const report = { protocol: LATEST_PROTOCOL_VERSION };
await client.connect(transport);
const tools = await client.listTools();
report.tools = tools.tools.map((t) => t.name).sort();
const found = await client.callTool({ name: "search", arguments: { query: "acme" } });
report.search = { is_error: Boolean(found.isError), text: found.content.map((c) => c.text) };
try {
  const denied = await client.callTool({ name: "delete_customer", arguments: { customer: "acme" } });
  report.delete = { is_error: Boolean(denied.isError), text: denied.content.map((c) => c.text) };
} catch (e) {
  report.delete = { raised: e.constructor.name, code: e.code, message: e.message, data: e.data };
}
await transport.terminateSession().catch(() => {});
await client.close();
console.log(JSON.stringify(report));
