//! Where NAT really sent a connection: kube-proxy (iptables or IPVS) rewrites a pod's packets to a
//! Service address into packets to one backend, and NodePort traffic from outside into packets
//! from the node's own address. The kernel counted what the pod's socket saw; conntrack knows both
//! sides. This module keeps, for every translated connection, "seen from a local socket as this
//! tuple, the real remote end is that address", fed by conntrack's dump and events.
//!
//! Its cost follows new connections, not bytes: one table insert per translated connection, one
//! hash lookup per per-connection flow entry at drain time. Connections stay resolvable for a
//! retention period after conntrack destroys them, so the drain after a sub-second connection
//! still finds it. The table is bounded; what does not fit is counted, never silently dropped.

pub mod conntrack;
pub(crate) mod netlink;
mod reader;
pub mod served;
mod table;
#[cfg(test)]
mod tests;

pub use reader::{local_addresses, spawn_resolver, start, ConntrackMetrics, ResolverOptions};
pub use table::{lock, NatStats, NatTable, Resolution, SharedNat, TrieChanges};
