//! Operator commands, one file each (`toolgate revoke`, `toolgate approvals`,
//! `toolgate tasks`, `toolgate mcp`), with the client they share to reach the operator API.

pub mod approvals;
pub mod inject;
pub mod mcp;
pub mod operator;
pub mod revoke;
pub mod tasks;
