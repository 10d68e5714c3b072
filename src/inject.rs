//! `toolgate inject`: a Kubernetes mutating admission webhook (AdmissionReview v1 over HTTPS)
//! that adds toolgate to the pods that ask for it — the native sidecar, the iptables init
//! step under transparent capture, the volumes, and for the agent's containers the trust
//! bundle and proxy environment — exactly what the chart's sidecar mode renders.
//!
//! Which pods reach it is the MutatingWebhookConfiguration's choice (the chart's injector
//! mode): pods labelled `toolgate.io/inject: "true"` on `/inject`, and every pod of a
//! namespace labelled `toolgate.io/inject: enabled` on `/inject/namespace`. The webhook still
//! reads the pod: `/inject` injects only a pod that says `"true"` (label or annotation), and
//! both paths leave alone a pod that says `"false"` or was injected already
//! (`toolgate.io/injected`). Per-pod annotations choose the ConfigMap (`toolgate.io/config`)
//! and the capture mode (`toolgate.io/capture`). A pod that cannot be injected safely — one
//! that asks to run as toolgate's uid or gid 1337, host networking under transparent capture,
//! names that collide — is refused with a message saying what to change.

pub mod pod;
pub mod review;
pub mod server;
pub mod template;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

/// Why the webhook could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{path}: {why}")]
    Tls { path: String, why: String },
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Template(#[from] template::TemplateError),
}
