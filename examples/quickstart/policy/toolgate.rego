# The quickstart policy: reads are free, state changes need context, money needs limits,
# and an MCP server's tools are allowed one by one.
#
# One decision rule, written as a first-match `else` chain: the RVM evaluates branches only
# until one holds, where separate complete rules would all be evaluated to check that they
# agree (see README "Performance"). Each branch names its action; conditions never overlap,
# so the order only matters for speed: the actions agents use most come first.
# `toolgate test -c examples/quickstart/toolgate.yaml` runs its tests (tests/).
package toolgate

import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading tickets is allowed"} if {
	input.action.name == "ticket.read"
} else := {"allow": true, "reason": "commenting is allowed"} if {
	input.action.name == "ticket.comment"
} else := {"allow": true, "reason": concat("", [input.action.attributes.issue, " was read earlier in this task"])} if {
	input.action.name == "ticket.transition"
	read_in_task
} else := {"allow": false, "reason": concat("", ["read ", input.action.attributes.issue, " in this task before changing it"])} if {
	input.action.name == "ticket.transition"
} else := {"allow": true, "reason": "reading payments is allowed"} if {
	input.action.name == "payment.read"
} else := {
	"allow": true,
	"reason": sprintf("payment of %v is within the limit of %v", [amount, data.limits.payment_max]),
	"credential": {"name": "payments-key", "scopes": ["payments:write"], "ttl": "60s"},
} if {
	input.action.name == "payment.create"
	amount <= data.limits.payment_max
} else := {"allow": false, "reason": sprintf("payment of %v exceeds the limit of %v", [amount, data.limits.payment_max])} if {
	input.action.name == "payment.create"
	amount > data.limits.payment_max
} else := {"allow": false, "reason": "payment amount is missing or not a number"} if {
	input.action.name == "payment.create"
} else := {"allow": true, "reason": "looking customers up is allowed"} if {
	input.action.name == "crm.lookup_customer"
} else := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
} else := {"allow": true, "reason": "MCP session housekeeping is allowed"} if {
	# initialize, tools/list, notifications, the event stream: not tool calls.
	input.action.tool == "crm"
	startswith(input.action.name, "crm.mcp.")
} else := {"allow": false, "reason": concat("", ["no tool in the catalog serves ", input.request.host])} if {
	input.action.tool == null
} else := {"allow": false, "reason": sprintf("%s has no catalogued action for %s %s", [input.action.tool, input.request.method, input.request.path])} if {
	input.action.name == "unknown"
}

amount := to_number(input.action.attributes.amount)

# A ticket may change state only after the agent read it, successfully, in this task.
# (A separate rule rather than inline in the else chain: regorus 0.14.1's RVM ends an else
# chain at a branch whose iteration finds nothing — see README "Performance".)
read_in_task if {
	some entry in input.chain
	entry.action == "ticket.read"
	entry.attributes.issue == input.action.attributes.issue
	entry.decision == "allow"
	entry.status < 400
}
