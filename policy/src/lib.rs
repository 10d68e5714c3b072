//! toolgate's decision logic, with no sockets: configuration, request normalisation,
//! classification into actions, and Rego evaluation. The proxy crate drives these stages;
//! `toolgate check`, `eval` and `test` use them alone.

pub mod accept;
pub mod approval;
pub mod body;
pub mod chain;
pub mod classify;
pub mod config;
pub mod credential;
pub mod delegation;
pub mod evaluate;
pub mod labels;
pub mod normalise;
pub mod offline;
pub mod prepare;
pub mod quickstart;
pub mod state;
pub mod testing;

pub use classify::{Catalog, Classification};
pub use config::Config;
pub use evaluate::{Decision, Effect, Policy};
pub use normalise::Normalised;
