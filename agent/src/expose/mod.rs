//! Expose: the totals as Prometheus series (netcost's own and Kubecost's), encoded once per
//! drain after the checkpoint that holds them is written, and the HTTP server that serves them.
//!
//! In: the labels, bytes and dollars of each drained entry. Out: the `traffic` and `kubecost`
//! metric groups (durable: the checkpoint keeps them), `/metrics`, `/healthz`, `/readyz`.

pub mod auth;
pub mod destinations;
pub mod exposition;
pub mod health;
pub mod kubecost;
pub mod server;
mod stalling;
pub mod tls;
pub mod traffic;

pub use destinations::{DestinationLabels, DestinationMetrics, DestinationTotal};
pub use exposition::{encode, ExpositionCache, Format};
pub use health::Health;
pub use kubecost::{KubecostLabels, KubecostMetrics, KubecostTotal};
pub use traffic::{Counters, Totals, TrafficMetrics, TrafficTotal};
