# The quickstart policy: reads are free, state changes need context, money needs limits (and
# a human above them), and an MCP server's tools are allowed one by one — and refused, and
# left out of its tool list, once a tool's definition changed since it was pinned.
#
# One decision rule, written as a first-match `else` chain: the RVM evaluates branches only
# until one holds, where separate complete rules would all be evaluated to check that they
# agree (see README "Performance"). Each branch names its action; conditions never overlap,
# so the order only matters for speed: the actions agents use most come first.
# `toolgate test -c examples/quickstart/toolgate.yaml` runs its tests (tests/).
package toolgate

import data.toolgate.lib
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
} else := {"allow": false, "reason": sprintf("payment of %v exceeds %v, the most a human may approve", [amount, data.limits.approval_max])} if {
	input.action.name == "payment.create"
	amount > data.limits.approval_max
} else := {
	# The identical request, retried after a human approved it (toolgate uses the approval
	# once). Policy can still refuse: the rule above holds whatever a human said.
	"allow": true,
	"reason": sprintf("payment of %v approved by %s", [amount, input.approval.approved_by]),
	"credential": {"name": "payments-key", "scopes": ["payments:write"], "ttl": "60s"},
} if {
	input.action.name == "payment.create"
	amount > data.limits.payment_max
	input.approval.approved_by
} else := {
	# Over the limit: held until a human approves this exact payment (`toolgate approvals`,
	# or the page on the admin listener at /approvals).
	"allow": false,
	"reason": sprintf("payment of %v exceeds the limit of %v: a human must approve it", [amount, data.limits.payment_max]),
	"approval": {"required": true, "approvers": ["group:payments-leads"], "ttl": "10m"},
} if {
	input.action.name == "payment.create"
	amount > data.limits.payment_max
} else := {"allow": false, "reason": "payment amount is missing or not a number"} if {
	input.action.name == "payment.create"
} else := {
	"allow": false,
	"reason": sprintf("the definition of %s changed since it was pinned (%s %s); now %s", [input.action.name, d.source, d.pinned_digest, d.digest]),
} if {
	# A rug pull: the server changed what a tool says it does (its description, schema or
	# annotations) after toolgate pinned it — at first sight, or in the tool's lock file
	# (`toolgate mcp pin`). Refused, and hidden from tools/list (each listed tool is decided
	# as its call), until an operator pins the new definition.
	input.action.tool == "crm"
	d := input.action.definition
	d.changed
} else := {"allow": true, "reason": "looking customers up is allowed", "labels": ["pii"]} if {
	# The answer holds customer PII: the task and the agent are labelled `pii`, for good.
	input.action.name == "crm.lookup_customer"
} else := {"allow": false, "reason": sprintf("no export after customer PII was read in this task (by %s at %s)", [pii.by, pii.at])} if {
	# No export after customer PII was read: in this task, or by this agent in any task
	# within chain.agent_label_ttl (24h) — switching task or making many harmless calls
	# does not help (labels outlive the chain's window).
	input.action.name == "crm.export_customers"
	pii := input.task.labels.pii
} else := {"allow": false, "reason": sprintf("no export: this agent read customer PII in another task (by %s at %s)", [pii.by, pii.at])} if {
	input.action.name == "crm.export_customers"
	pii := input.agent.labels.pii
} else := {"allow": true, "reason": "exporting customers is allowed before any PII was read"} if {
	input.action.name == "crm.export_customers"
} else := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
} else := {"allow": true, "reason": "MCP session housekeeping is allowed"} if {
	# initialize, tools/list, notifications, the event stream: not tool calls.
	input.action.tool == "crm"
	startswith(input.action.name, "crm.mcp.")
} else := {"allow": true, "reason": "reads may be handed on, once"} if {
	# Handing part of the task to another agent (POST http://toolgate.internal/delegate, with
	# `delegation` configured): reads only, one hop. toolgate never grants more than the task
	# holds, and refuses the delegate anything outside what it was handed, whatever the
	# delegate's own policy says.
	input.action.name == "task.delegate"
	input.action.attributes.depth == 1
	every action in input.action.attributes.actions {
		endswith(action, ".read")
	}
} else := {"allow": false, "reason": "only reads may be handed on, and only once"} if {
	input.action.name == "task.delegate"
} else := {"allow": false, "reason": concat("", ["no tool in the catalog serves ", input.request.host])} if {
	input.action.tool == null
} else := {"allow": false, "reason": sprintf("%s has no catalogued action for %s %s", [input.action.tool, input.request.method, input.request.path])} if {
	input.action.name == "unknown"
}

amount := to_number(input.action.attributes.amount)

# A ticket may change state only after the agent read it in this task — and the tool
# answered the read 2xx/3xx (lib.succeeded: a read still in flight, refused, abandoned by the
# agent or failed does not count).
read_in_task if lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})
