//! Commands, one file each: the operator commands (`toolgate revoke`, `toolgate approvals`,
//! `toolgate tasks`, `toolgate mcp`), with the client they share to reach the operator API, and
//! the policy tools: `toolgate replay` and `toolgate explain` read decision logs, `toolgate
//! schema` prints (and `check` and `test` apply) the policy input's schema.

pub mod approvals;
pub mod explain;
pub mod inject;
pub mod mcp;
pub mod operator;
pub mod replay;
pub mod revoke;
pub mod schema;
pub mod tasks;
