//! Operator commands, one file each (`toolgate revoke`, `toolgate approvals`, `toolgate mcp`,
//! and later `tasks`), with the client they share to reach the operator API.

pub mod approvals;
pub mod mcp;
pub mod operator;
pub mod revoke;
