# Unit tests for the quickstart policy, run by `toolgate test` (like `opa test`).
package toolgate_test

import rego.v1

import data.toolgate

read(issue, status) := {"action": "ticket.read", "attributes": {"issue": issue}, "decision": "allow", "status": status}

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

test_payment_limit_comes_from_data if {
	d := toolgate.decision with input as {"action": {"name": "payment.create", "tool": "payments", "attributes": {"amount": "101"}}, "request": {}, "chain": []}
	d.reason == "payment of 101 exceeds the limit of 100"
}

test_deleting_customers_needs_a_human if {
	d := toolgate.decision with input as {"action": {"name": "crm.delete_customer", "tool": "crm", "attributes": {"customer": "ACME"}}, "request": {}, "chain": []}
	not d.allow
	d.reason == "deleting customers needs a human"
}

test_unlisted_mcp_tools_are_denied if {
	not toolgate.decision.allow with input as {"action": {"name": "crm.export_everything", "tool": "crm", "attributes": {}}, "request": {}, "chain": []}
}
