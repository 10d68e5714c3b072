package toolgate

import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

decision := {"allow": true, "reason": "reading is allowed"} if {
	input.action.name in {"ticket.read", "ticket.mine", "record.read", "crm.search", "crm.mcp.tools_list", "crm.mcp.initialize", "crm.mcp.notifications_initialized"}
} else := {"allow": true, "reason": "transitions other than close are allowed"} if {
	input.action.name in {"ticket.transition", "ticket.reopen", "attachment.upload"}
} else := {"allow": false, "reason": "closing a ticket needs a human"} if {
	input.action.name == "ticket.close"
} else := {"allow": true, "reason": sprintf("payment of %v is within the limit", [input.action.attributes.amount])} if {
	input.action.name == "payment.create"
	to_number(input.action.attributes.amount) <= 100
} else := {"allow": false, "reason": sprintf("payment of %v exceeds the limit of 100", [input.action.attributes.amount])} if {
	input.action.name == "payment.create"
	to_number(input.action.attributes.amount) > 100
} else := {"allow": false, "reason": "payment amount is missing or not a number"} if {
	input.action.name == "payment.create"
} else := {"allow": false, "reason": "full refunds need a human"} if {
	input.action.name == "payment.refund"
} else := {"allow": false, "reason": "deleting customers needs a human"} if {
	input.action.name == "crm.delete_customer"
} else := {"allow": input.request.body.params.arguments.limit <= 10, "reason": "export size checked from the body"} if {
	input.action.name == "crm.export"
}
