//! Operator commands, one file each (`toolgate revoke`, and later `approvals`, `tasks`), with
//! the client they share to reach the operator API.

pub mod operator;
pub mod revoke;
