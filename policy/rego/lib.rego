# toolgate's helper library: shipped with the binary and loaded beside every policy, as
# data.toolgate.lib. Import it with `import data.toolgate.lib` and call lib.done_in_task(…).
# README "Writing policy" documents each rule; `toolgate test` runs policies with it.
package toolgate.lib

import rego.v1

# The action has ended with the tool answering 2xx or 3xx. An action still in flight
# (`pending`), refused by toolgate, abandoned by the agent, failed or timed out has not.
succeeded(entry) if {
	entry.pending == false
	entry.outcome == "response"
	entry.status >= 200
	entry.status < 400
}

# The action has not ended yet.
in_flight(entry) if entry.pending == true

# An earlier action of this task named `action`, allowed and successful, whose attributes
# include every key and value of `attrs` ({} matches any).
done_in_task(action, attrs) if {
	some entry in input.chain
	entry.action == action
	entry.decision == "allow"
	succeeded(entry)
	every key, value in attrs {
		entry.attributes[key] == value
	}
}

# An earlier action of this task named `action`, whatever its decision and outcome (in
# flight included).
attempted_in_task(action) if {
	some entry in input.chain
	entry.action == action
}

# The task, or the agent in any task within `chain.agent_label_ttl`, carries `label`.
labelled(label) if input.task.labels[label]

labelled(label) if input.agent.labels[label]

# Nothing of the task's history was cut (window, eviction, idle, restart): a rule that needs
# the whole history can fail closed when this is false.
history_complete if input.task.history_complete == true
