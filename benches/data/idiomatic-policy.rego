package toolgate
import rego.v1

# The load bench's idiomatic policy: the same decisions as load-policy.rego, written the way
# OPA users write Rego — separate complete rules, a `deny contains msg` set, a helper rule
# that scans the task's chain — instead of one hand-ordered rule. Every rule is evaluated on
# every request (the RVM must check that complete rules agree), and the helper scans the
# whole chain whether or not an earlier rule already decided.

default allow := false

allow if {
	reads[input.action.name]
	count(deny) == 0
}

reads := {"item.read"}

deny contains "items are never deleted by agents" if {
	input.action.name == "item.delete"
}

deny contains msg if {
	deleted_earlier(input.action.attributes.item)
	msg := sprintf("item %v was deleted earlier in this task", [input.action.attributes.item])
}

deny contains "this task was refused too often" if {
	count(refused) > 1000
}

# Earlier actions of this task that policy refused.
refused contains e.seq if {
	some e in input.chain
	e.decision == "deny"
}

deleted_earlier(item) if {
	some e in input.chain
	e.action == "item.delete"
	e.decision == "allow"
	e.attributes.item == item
}

reason := "the item was not deleted in this task" if allow

reason := concat("; ", deny) if {
	not allow
	count(deny) > 0
}

reason := "no rule allows this action" if {
	not allow
	count(deny) == 0
}

decision := {"allow": allow, "reason": reason}
