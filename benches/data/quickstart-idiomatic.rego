# The quickstart policy (examples/quickstart/policy/toolgate.rego) written the way OPA users
# write Rego: the prohibitions as a `deny contains msg` set, one complete rule per allowed
# action, helper rules — instead of one hand-ordered first-match `else` chain. It reaches the
# same decisions; `cargo bench --bench evaluate` checks that on each input it measures, and
# measures what the idiomatic form costs over the `else` chain (README "Performance").
package toolgate

import data.toolgate.lib
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": false, "reason": concat("; ", deny)} if count(deny) > 0

decision := allowed if {
	count(deny) == 0
	allowed
}

decision := held if {
	count(deny) == 0
	not allowed
	held
}

# What is never allowed.

deny contains concat("", ["read ", input.action.attributes.issue, " in this task before changing it"]) if {
	input.action.name == "ticket.transition"
	not read_in_task
}

deny contains sprintf("payment of %v exceeds %v, the most a human may approve", [amount, data.limits.approval_max]) if {
	input.action.name == "payment.create"
	amount > data.limits.approval_max
}

deny contains "payment amount is missing or not a number" if {
	input.action.name == "payment.create"
	not amount
}

deny contains sprintf("no export after customer PII was read in this task (by %s at %s)", [pii.by, pii.at]) if {
	input.action.name == "crm.export_customers"
	pii := input.task.labels.pii
}

deny contains sprintf("no export: this agent read customer PII in another task (by %s at %s)", [pii.by, pii.at]) if {
	input.action.name == "crm.export_customers"
	not input.task.labels.pii
	pii := input.agent.labels.pii
}

deny contains "deleting customers needs a human" if input.action.name == "crm.delete_customer"

deny contains "only reads may be handed on, and only once" if {
	input.action.name == "task.delegate"
	not delegation_allowed
}

deny contains concat("", ["no tool in the catalog serves ", input.request.host]) if input.action.tool == null

deny contains sprintf("%s has no catalogued action for %s %s", [input.action.tool, input.request.method, input.request.path]) if {
	input.action.tool != null
	input.action.name == "unknown"
}

# What is allowed, one rule per action.

allowed := {"allow": true, "reason": "reading tickets is allowed"} if input.action.name == "ticket.read"

allowed := {"allow": true, "reason": "commenting is allowed"} if input.action.name == "ticket.comment"

allowed := {"allow": true, "reason": concat("", [input.action.attributes.issue, " was read earlier in this task"])} if {
	input.action.name == "ticket.transition"
	read_in_task
}

allowed := {"allow": true, "reason": "reading payments is allowed"} if input.action.name == "payment.read"

allowed := {
	"allow": true,
	"reason": sprintf("payment of %v is within the limit of %v", [amount, data.limits.payment_max]),
	"credential": payment_credential,
} if {
	input.action.name == "payment.create"
	amount <= data.limits.payment_max
}

allowed := {
	"allow": true,
	"reason": sprintf("payment of %v approved by %s", [amount, input.approval.approved_by]),
	"credential": payment_credential,
} if {
	input.action.name == "payment.create"
	amount > data.limits.payment_max
	input.approval.approved_by
}

allowed := {"allow": true, "reason": "looking customers up is allowed", "labels": ["pii"]} if {
	input.action.name == "crm.lookup_customer"
}

allowed := {"allow": true, "reason": "exporting customers is allowed before any PII was read"} if {
	input.action.name == "crm.export_customers"
}

allowed := {"allow": true, "reason": "MCP session housekeeping is allowed"} if {
	input.action.tool == "crm"
	startswith(input.action.name, "crm.mcp.")
}

allowed := {"allow": true, "reason": "reads may be handed on, once"} if {
	input.action.name == "task.delegate"
	delegation_allowed
}

# Held for a human: a payment over the limit, not yet approved.
held := {
	"allow": false,
	"reason": sprintf("payment of %v exceeds the limit of %v: a human must approve it", [amount, data.limits.payment_max]),
	"approval": {"required": true, "approvers": ["group:payments-leads"], "ttl": "10m"},
} if {
	input.action.name == "payment.create"
	amount > data.limits.payment_max
	not input.approval.approved_by
}

# Helpers.

payment_credential := {"name": "payments-key", "scopes": ["payments:write"], "ttl": "60s"}

amount := to_number(input.action.attributes.amount)

read_in_task if lib.done_in_task("ticket.read", {"issue": input.action.attributes.issue})

delegation_allowed if {
	input.action.attributes.depth == 1
	every action in input.action.attributes.actions {
		endswith(action, ".read")
	}
}
