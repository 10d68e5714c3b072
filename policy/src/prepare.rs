//! The stages before evaluation — accept → normalise → classify — as one function shared by
//! the proxy and the offline commands (`toolgate eval`, `toolgate test`), so what is tested
//! offline is exactly what the proxy decides on.

use http::HeaderMap;

use crate::accept::{self, Accepted, Destination};
use crate::classify::{Classification, ClassifyError};
use crate::config::Config;
use crate::normalise::{self, Rejection};

/// A request whose destination, canonical form and action are known.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub accepted: Accepted,
    pub classification: Classification,
}

/// Why a request was refused before policy (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Ambiguous(#[from] ClassifyError),
}

/// Accept, normalise and classify one request.
pub fn prepare(
    config: &Config,
    method: &str,
    target: &[u8],
    headers: &HeaderMap,
) -> Result<Prepared, Refused> {
    let accepted = accept::accept(config, method, target, headers)?;
    classify(config, accepted, headers)
}

/// Accept, normalise and classify one request that arrived on a connection whose destination
/// is fixed (an intercepted CONNECT tunnel, a transparently captured connection).
pub fn prepare_at(
    config: &Config,
    destination: &Destination,
    method: &str,
    target: &[u8],
    headers: &HeaderMap,
) -> Result<Prepared, Refused> {
    let accepted = accept::accept_at(config, destination, method, target, headers)?;
    classify(config, accepted, headers)
}

fn classify(config: &Config, accepted: Accepted, headers: &HeaderMap) -> Result<Prepared, Refused> {
    normalise::headers(headers, accepted.tool.is_some())?;
    let classification = config
        .catalog
        .classify(accepted.tool, &accepted.request, headers)?;
    Ok(Prepared {
        accepted,
        classification,
    })
}
