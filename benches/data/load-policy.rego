package toolgate
import rego.v1

default decision := {"allow": false, "reason": "no rule allows this action"}

# A chain rule on the benchmarked path: a read is allowed unless this task already deleted the
# item, so every allowed read scans the task's chain (up to chain.max_actions entries).
decision := {"allow": true, "reason": "the item was not deleted in this task"} if {
    input.action.name == "item.read"
    not deleted_in_task
}

decision := {"allow": false, "reason": "items are never deleted by agents"} if {
    input.action.name == "item.delete"
}

deleted_in_task if {
    some e in input.chain
    e.action == "item.delete"
    e.decision == "allow"
    e.attributes.item == input.action.attributes.item
}
