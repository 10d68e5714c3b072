//! Commands, one file each: the operator commands (`toolgate revoke`, `toolgate approvals`,
//! and later `tasks`), with the client they share to reach the operator API, and the policy
//! tools that read decision logs (`toolgate replay`, `toolgate explain`).

pub mod approvals;
pub mod explain;
pub mod operator;
pub mod replay;
pub mod revoke;
