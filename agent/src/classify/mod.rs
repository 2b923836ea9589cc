//! Classify: where bytes went. The remote address a socket saw becomes the real remote end
//! (through conntrack for NAT-rewritten connections), then a place (by tiers of sources: the
//! config, AWS, the cluster), then a destination: class, cloud service and route.
//!
//! In: drained entries' remote addresses, the inventory, the cloud facts, conntrack. Out:
//! `Destination` for every byte, the topology's own place (our region, for prices), and the
//! `topology` and `conntrack` metric groups.

pub mod classifier;
pub mod kubecost;
pub mod layers;
pub mod nat;
pub mod peers;
pub mod pending;
pub mod route;
pub mod services;
pub mod topology;

pub use classifier::{Classifier, NatOutcome, RemoteEnd, TopologyMetrics};
