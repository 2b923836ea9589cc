//! Serving ports: for connections a remote end opened to a local address (a pod of this node, or
//! the node itself), the local port they came to — so destinations can say who reaches a pod's
//! port and what that costs ("who scrapes my exporter from outside"). Fed by the conntrack events
//! the NAT table reads, for every connection (not only translated ones); nothing per packet.
//!
//! Bytes are counted per remote address, not per connection, so all bytes between a pod and a
//! remote end that opened a connection to it carry that port (the port of the latest such
//! connection when there are several).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::conntrack::{Connection, Event};

/// An entry no event or dump row mentioned for this long is forgotten (dumps come every 5 min).
const IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
struct Served {
    port: u16,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct ServedPorts {
    /// This node's pods' addresses and its own.
    local: HashSet<IpAddr>,
    /// (local address, remote address) → the port.
    entries: HashMap<(IpAddr, IpAddr), Served>,
    capacity: usize,
    /// Connections not remembered because the table was full.
    pub full: u64,
}

impl ServedPorts {
    pub fn new(capacity: usize) -> ServedPorts {
        ServedPorts {
            capacity,
            ..ServedPorts::default()
        }
    }

    /// The local addresses whose incoming connections are remembered (replaces the last set).
    pub fn set_local(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.local = addrs.into_iter().collect();
        let local = &self.local;
        self.entries.retain(|(l, _), _| local.contains(l));
    }

    /// The answering side of `c` when it is local: (local address, remote address, port).
    fn incoming(&self, c: &Connection) -> Option<(IpAddr, IpAddr, u16)> {
        // Whoever answers is the server: after DNAT (a NodePort) the reply's source is the pod.
        let local = c.reply.src;
        let served = matches!(c.original.protocol, 6 | 17 | 132) && self.local.contains(&local);
        served.then_some((local, c.original.src, c.reply.src_port))
    }

    pub fn apply(&mut self, event: &Event, now: Instant) {
        let c = match event {
            Event::New(c) | Event::Destroy(c) => c,
        };
        let Some((local, remote, port)) = self.incoming(c) else {
            return;
        };
        if let Some(s) = self.entries.get_mut(&(local, remote)) {
            if matches!(event, Event::New(_)) {
                s.port = port;
            }
            s.last_seen = now;
            return;
        }
        if self.entries.len() >= self.capacity {
            self.full += 1;
            return;
        }
        self.entries.insert(
            (local, remote),
            Served {
                port,
                last_seen: now,
            },
        );
    }

    pub fn purge(&mut self, now: Instant) {
        self.entries
            .retain(|_, s| now.duration_since(s.last_seen) < IDLE);
    }

    /// The port `remote` connected to on one of `local` (the owner's addresses), if it did.
    pub fn port(&self, local: &[IpAddr], remote: IpAddr) -> Option<u16> {
        local
            .iter()
            .find_map(|l| self.entries.get(&(*l, remote)).map(|s| s.port))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::nat::conntrack::test_tuple as t;

    #[test]
    fn incoming_connections_to_local_addresses_give_their_port() {
        let mut s = ServedPorts::new(2);
        s.set_local(["10.0.1.2".parse().unwrap()]);
        let now = Instant::now();
        // The internet host scrapes the pod's exporter; the pod also calls out to someone.
        let scrape = Connection {
            original: t("203.0.113.10", 40_000, "10.0.1.2", 9100),
            reply: t("10.0.1.2", 9100, "203.0.113.10", 40_000),
        };
        let outgoing = Connection {
            original: t("10.0.1.2", 50_000, "10.0.16.10", 443),
            reply: t("10.0.16.10", 443, "10.0.1.2", 50_000),
        };
        s.apply(&Event::New(scrape), now);
        s.apply(&Event::New(outgoing), now);
        let pod = ["10.0.1.2".parse().unwrap()];
        assert_eq!(s.port(&pod, "203.0.113.10".parse().unwrap()), Some(9100));
        assert_eq!(s.port(&pod, "10.0.16.10".parse().unwrap()), None);
        assert_eq!(s.len(), 1);
        s.purge(now + IDLE);
        assert!(s.is_empty());
    }
}
