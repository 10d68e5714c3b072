//! The quickstart (`examples/quickstart`), compiled in: what `toolgate run` serves without
//! `-c`, what `toolgate demo` runs, and what the pipeline bench measures — one list, so a file
//! added to the quickstart is added everywhere.

/// Path within the quickstart directory, and contents.
pub const FILES: &[(&str, &[u8])] = &[
    (
        "toolgate.yaml",
        include_bytes!("../../examples/quickstart/toolgate.yaml"),
    ),
    (
        "policy/toolgate.rego",
        include_bytes!("../../examples/quickstart/policy/toolgate.rego"),
    ),
    (
        "policy/data.yaml",
        include_bytes!("../../examples/quickstart/policy/data.yaml"),
    ),
    (
        "secrets/jira-token",
        include_bytes!("../../examples/quickstart/secrets/jira-token"),
    ),
    (
        "secrets/payments-key",
        include_bytes!("../../examples/quickstart/secrets/payments-key"),
    ),
    (
        "secrets/crm-token",
        include_bytes!("../../examples/quickstart/secrets/crm-token"),
    ),
];
