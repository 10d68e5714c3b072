# Unit tests for the quickstart policy, run by `toolgate test` (like `opa test`).
package toolgate_test

import rego.v1

import data.toolgate

read(issue, status) := {"action": "ticket.read", "attributes": {"issue": issue}, "decision": "allow", "pending": false, "outcome": "response", "status": status}

# A read still in flight: no outcome, no status yet.
read_in_flight(issue) := {"action": "ticket.read", "attributes": {"issue": issue}, "decision": "allow", "pending": true}

# A read the agent hung up on before the tool answered.
read_abandoned(issue) := {"action": "ticket.read", "attributes": {"issue": issue}, "decision": "allow", "pending": false, "outcome": "agent_disconnected"}

transition(issue, chain) := {
	"action": {"name": "ticket.transition", "tool": "jira", "attributes": {"issue": issue}},
	"request": {}, "chain": chain,
}

test_reads_are_allowed if {
	toolgate.decision.allow with input as {"action": {"name": "ticket.read", "tool": "jira", "attributes": {"issue": "SUP-1"}}, "request": {}, "chain": []}
}

test_transition_needs_a_successful_read if {
	not toolgate.decision.allow with input as {
		"action": {"name": "ticket.transition", "tool": "jira", "attributes": {"issue": "SUP-1"}},
		"request": {}, "chain": [read("SUP-1", 500)],
	}
	toolgate.decision.allow with input as {
		"action": {"name": "ticket.transition", "tool": "jira", "attributes": {"issue": "SUP-1"}},
		"request": {}, "chain": [read("SUP-1", 200)],
	}
}

test_a_read_in_flight_or_abandoned_does_not_count if {
	not toolgate.decision.allow with input as transition("SUP-1", [read_in_flight("SUP-1")])
	not toolgate.decision.allow with input as transition("SUP-1", [read_abandoned("SUP-1")])
	toolgate.decision.allow with input as transition("SUP-1", [read_abandoned("SUP-1"), read("SUP-1", 200)])
}

test_no_export_after_pii_in_this_task_or_by_this_agent if {
	clean := {"action": {"name": "crm.export_customers", "tool": "crm", "attributes": {}}, "request": {}, "chain": [], "task": {"labels": {}}, "agent": {"labels": {}}}
	toolgate.decision.allow with input as clean
	mark := {"by": "crm.lookup_customer", "at": "2026-12-02T10:00:00Z"}
	not toolgate.decision.allow with input as object.union(clean, {"task": {"labels": {"pii": mark}}})
	d := toolgate.decision with input as object.union(clean, {"agent": {"labels": {"pii": mark}}})
	not d.allow
	d.reason == "no export: this agent read customer PII in another task (by crm.lookup_customer at 2026-12-02T10:00:00Z)"
}

test_looking_a_customer_up_labels_pii if {
	d := toolgate.decision with input as {"action": {"name": "crm.lookup_customer", "tool": "crm", "attributes": {}}, "request": {}, "chain": []}
	d.allow
	d.labels == ["pii"]
}

test_payment_limit_comes_from_data if {
	d := toolgate.decision with input as {"action": {"name": "payment.create", "tool": "payments", "attributes": {"amount": "101"}}, "request": {}, "chain": []}
	d.reason == "payment of 101 exceeds the limit of 100: a human must approve it"
	d.approval.required
	d.approval.approvers == ["group:payments-leads"]
}

test_an_approved_payment_is_allowed_with_the_payments_credential if {
	d := toolgate.decision with input as {"action": {"name": "payment.create", "tool": "payments", "attributes": {"amount": "101"}}, "request": {}, "chain": [], "approval": {"id": "a1", "approved_by": "alice", "approved_at": "2026-12-02T10:00:00Z", "comment": null}}
	d.allow
	not d.approval
	d.credential.name == "payments-key"
}

test_deleting_customers_needs_a_human if {
	d := toolgate.decision with input as {"action": {"name": "crm.delete_customer", "tool": "crm", "attributes": {"customer": "ACME"}}, "request": {}, "chain": []}
	not d.allow
	d.reason == "deleting customers needs a human"
}

test_unlisted_mcp_tools_are_denied if {
	not toolgate.decision.allow with input as {"action": {"name": "crm.export_everything", "tool": "crm", "attributes": {}}, "request": {}, "chain": []}
}

test_a_tool_whose_definition_changed_is_refused_naming_the_pin if {
	definition := {"known": true, "digest": "sha256:bb", "pinned": true, "pinned_digest": "sha256:aa", "source": "lock", "lock": "crm.lock.yaml", "changed": true}
	d := toolgate.decision with input as {"action": {"name": "crm.lookup_customer", "tool": "crm", "attributes": {}, "definition": definition}, "request": {}, "chain": []}
	not d.allow
	d.reason == "the definition of crm.lookup_customer changed since it was pinned (lock sha256:aa); now sha256:bb"
}

test_a_pinned_unchanged_tool_is_decided_as_usual if {
	definition := {"known": true, "digest": "sha256:aa", "pinned": true, "pinned_digest": "sha256:aa", "source": "first_sight", "lock": null, "changed": false}
	d := toolgate.decision with input as {"action": {"name": "crm.lookup_customer", "tool": "crm", "attributes": {}, "definition": definition}, "request": {}, "chain": []}
	d.allow
}

delegate(actions, depth) := {
	"action": {"name": "task.delegate", "tool": null, "attributes": {"to": "spiffe://example.org/ns/support/sa/billing-agent", "actions": actions, "scopes": [], "ttl": 600, "depth": depth}},
	"request": {"host": "toolgate.internal"}, "chain": [],
}

test_only_reads_are_handed_on_and_only_once if {
	toolgate.decision.allow with input as delegate(["ticket.read", "payment.read"], 1)
	not toolgate.decision.allow with input as delegate(["ticket.read", "ticket.transition"], 1)
	not toolgate.decision.allow with input as delegate(["ticket.read"], 2)
}
