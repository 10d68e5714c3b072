//! toolgate's data path on pingora. Modules follow the request pipeline (DESIGN.md §2):
//! `identify` → accept/normalise/classify/evaluate (the policy crate) → `credential` →
//! `forward` → `record`, sequenced by `pipeline`; `problem` turns refusals into responses.

pub mod accept;
pub mod admin;
pub mod approval;
pub mod body;
pub mod ca;
pub mod capture;
pub mod credential;
pub mod delegation;
pub mod evaluate;
pub mod forward;
pub mod gateway;
pub mod identify;
pub mod mcp;
pub mod operator;
pub mod pipeline;
pub mod problem;
pub mod record;
pub mod reload;
pub mod server;
pub mod task_end;
pub mod upgrade;

pub use gateway::{Gateway, LoadError, Snapshot};
pub use server::{serve, ServeError};
