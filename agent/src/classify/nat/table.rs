//! The table of translated connections: for each, seen from a local socket as this tuple, the
//! real remote end is that address.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use agent_common::FlowKey;

use super::{
    conntrack::{Connection, Event, Tuple},
    served::ServedPorts,
};
use crate::vocab::Cidr;

/// What the table says about a flow entry's remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// NAT rewrote this connection: the real remote end, and whether our side opened it.
    Translated { remote: IpAddr, outbound: bool },
    /// No translation known, and none expected (e.g. a node address used without SNAT).
    Direct,
    /// A Service address with no conntrack entry: the real end is unknown.
    Unresolved,
}

struct Peer {
    addr: IpAddr,
    /// Set once conntrack destroyed the connection (or a dump no longer listed it).
    expires: Option<Instant>,
    /// The dump generation that last saw it alive.
    seen: u64,
    /// The connection's tuple in the other direction.
    other: Tuple,
    /// Whether this is the connection's original direction (the entry that owns its lifetime).
    original: bool,
}

/// Addresses conntrack showed being rewritten, with how many live connections use them.
struct Learned {
    dnat: bool,
    /// The node's own addresses: kept for the agent's life.
    pinned: bool,
    connections: u32,
    idle_since: Instant,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    pub new: u64,
    pub destroyed: u64,
    /// Connections that could not be stored (table at capacity).
    pub full: u64,
}

/// Changes to the kernel's `TRANSLATED` prefixes the table asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrieChanges {
    pub add: Vec<Cidr>,
    pub remove: Vec<Cidr>,
}

pub struct NatTable {
    peers: HashMap<Tuple, Peer>,
    expiring: VecDeque<(Instant, Tuple)>,
    learned: HashMap<IpAddr, Learned>,
    service_cidrs: Vec<Cidr>,
    capacity: usize,
    retention: Duration,
    generation: u64,
    pub stats: NatStats,
    changes: TrieChanges,
    /// Ports of connections remote ends opened to local addresses.
    pub served: ServedPorts,
}

pub type SharedNat = Arc<Mutex<NatTable>>;

/// How long an address nothing uses any more stays in the kernel's prefixes.
pub(super) const LEARNED_IDLE: Duration = Duration::from_secs(600);

impl NatTable {
    /// `capacity` counts tuples (two per connection).
    pub fn new(service_cidrs: Vec<Cidr>, capacity: usize, retention: Duration) -> NatTable {
        let changes = TrieChanges {
            add: service_cidrs.clone(),
            remove: Vec::new(),
        };
        NatTable {
            peers: HashMap::new(),
            expiring: VecDeque::new(),
            learned: HashMap::new(),
            service_cidrs,
            capacity,
            retention,
            generation: 0,
            stats: NatStats::default(),
            changes,
            served: ServedPorts::new(capacity / 2),
        }
    }

    pub fn shared(self) -> SharedNat {
        Arc::new(Mutex::new(self))
    }

    /// Tuples stored (two per translated connection).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn learned_addresses(&self) -> usize {
        self.learned.len()
    }

    /// Prefix changes for the kernel since the last call.
    pub fn take_changes(&mut self) -> TrieChanges {
        std::mem::take(&mut self.changes)
    }

    /// Addresses that are the result of SNAT on this node (its own addresses): connections to
    /// them are counted per connection from the start, before any event taught us.
    pub fn add_node_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>, now: Instant) {
        for addr in addrs {
            self.learn(addr, false, now).pinned = true;
        }
    }

    fn in_service_cidrs(&self, addr: IpAddr) -> bool {
        self.service_cidrs.iter().any(|c| c.contains(addr))
    }

    fn learn(&mut self, addr: IpAddr, dnat: bool, now: Instant) -> &mut Learned {
        let in_cidrs = self.in_service_cidrs(addr);
        let entry = self.learned.entry(addr).or_insert_with(|| {
            if !in_cidrs {
                self.changes.add.push(Cidr::host(addr));
            }
            Learned {
                dnat,
                pinned: false,
                connections: 0,
                idle_since: now,
            }
        });
        entry.dnat |= dnat;
        entry
    }

    /// The addresses a connection's local sockets see instead of the real remote end.
    fn rewritten(c: &Connection) -> impl Iterator<Item = (IpAddr, bool)> {
        let dnat = c.dnat().then_some((c.original.dst, true));
        let snat = c.snat().then_some((c.reply.dst, false));
        dnat.into_iter().chain(snat)
    }

    fn connection_opened(&mut self, c: &Connection, now: Instant) {
        for (addr, dnat) in Self::rewritten(c) {
            self.learn(addr, dnat, now).connections += 1;
        }
    }

    fn connection_closed(&mut self, c: &Connection, now: Instant) {
        for (addr, _) in Self::rewritten(c) {
            if let Some(l) = self.learned.get_mut(&addr) {
                l.connections = l.connections.saturating_sub(1);
                if l.connections == 0 {
                    l.idle_since = now;
                }
            }
        }
    }

    pub fn apply(&mut self, event: &Event, now: Instant) {
        self.served.apply(event, now);
        match event {
            Event::New(c) => {
                self.stats.new += 1;
                self.insert(c, now);
            }
            Event::Destroy(c) => {
                self.stats.destroyed += 1;
                if !(c.dnat() || c.snat()) {
                    return;
                }
                // A DESTROY whose NEW we missed still teaches where the bytes went.
                self.insert(c, now);
                self.close(c, now);
            }
        }
    }

    fn insert(&mut self, c: &Connection, now: Instant) {
        if !(c.dnat() || c.snat()) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&c.original) {
            // Already known (a dump row of a connection an event brought, or a reused tuple).
            p.seen = self.generation;
            if p.expires.take().is_some() {
                if let Some(q) = self.peers.get_mut(&c.reply) {
                    q.expires = None;
                }
                self.connection_opened(c, now);
            }
            return;
        }
        if self.peers.len() + 2 > self.capacity {
            self.stats.full += 1;
            return;
        }
        let generation = self.generation;
        // Seen by the originator (a local client): the real remote is who answers.
        self.peers.insert(
            c.original,
            Peer {
                addr: c.reply.src,
                expires: None,
                seen: generation,
                other: c.reply,
                original: true,
            },
        );
        // Seen by the answering side (a local backend): the real remote is the originator.
        self.peers.insert(
            c.reply,
            Peer {
                addr: c.original.src,
                expires: None,
                seen: generation,
                other: c.original,
                original: false,
            },
        );
        self.connection_opened(c, now);
    }

    /// The connection is gone from conntrack: keep it resolvable for the retention period.
    fn close(&mut self, c: &Connection, now: Instant) {
        let Some(p) = self.peers.get_mut(&c.original) else {
            return;
        };
        if p.expires.is_some() {
            return;
        }
        let at = now + self.retention;
        p.expires = Some(at);
        if let Some(q) = self.peers.get_mut(&c.reply) {
            q.expires = Some(at);
        }
        self.expiring.push_back((at, c.original));
        self.connection_closed(c, now);
    }

    /// Starts a dump: rows seen during it are marked with a new generation.
    pub fn begin_dump(&mut self) {
        self.generation += 1;
    }

    /// Ends a dump: live connections it did not list were destroyed while we were not listening.
    pub fn end_dump(&mut self, now: Instant) {
        let generation = self.generation;
        let missed: Vec<Connection> = self
            .peers
            .iter()
            .filter(|(_, p)| p.original && p.expires.is_none() && p.seen < generation)
            .map(|(t, p)| Connection {
                original: *t,
                reply: p.other,
            })
            .collect();
        for c in missed {
            self.close(&c, now);
        }
    }

    /// Drops connections whose retention is over, and learned addresses idle for long.
    pub fn purge(&mut self, now: Instant) {
        self.served.purge(now);
        while let Some(&(at, original)) = self.expiring.front() {
            if at > now {
                break;
            }
            self.expiring.pop_front();
            let Some(p) = self.peers.get(&original) else {
                continue;
            };
            // Re-opened since (a reused tuple): keep it.
            if p.expires != Some(at) {
                continue;
            }
            let reply = p.other;
            self.peers.remove(&original);
            self.peers.remove(&reply);
        }
        // A storm's worth of capacity is given back once it has passed.
        if self.peers.capacity() > 4096 && self.peers.len() < self.peers.capacity() / 4 {
            self.peers.shrink_to(self.peers.len() * 2);
            self.expiring.shrink_to(self.expiring.len() * 2);
        }
        let idle: Vec<IpAddr> = self
            .learned
            .iter()
            .filter(|(_, l)| {
                l.connections == 0 && !l.pinned && now.duration_since(l.idle_since) >= LEARNED_IDLE
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in idle {
            self.learned.remove(&addr);
            if !self.in_service_cidrs(addr) {
                self.changes.remove.push(Cidr::host(addr));
            }
        }
    }

    /// The real remote end of a per-connection flow entry.
    pub fn resolve(&self, key: &FlowKey) -> Resolution {
        let remote = key.remote_addr();
        let tuple = Tuple {
            protocol: key.protocol,
            src: key.local_addr(),
            src_port: u16::from_be(key.local_port),
            dst: remote,
            dst_port: u16::from_be(key.remote_port),
        };
        if let Some(p) = self.peers.get(&tuple) {
            return Resolution::Translated {
                remote: p.addr,
                outbound: p.original,
            };
        }
        let vip =
            self.in_service_cidrs(remote) || self.learned.get(&remote).is_some_and(|l| l.dnat);
        if vip {
            Resolution::Unresolved
        } else {
            Resolution::Direct
        }
    }
}

/// Locks a shared table, surviving a panicked holder (the table stays consistent per call).
pub fn lock(nat: &SharedNat) -> std::sync::MutexGuard<'_, NatTable> {
    nat.lock().unwrap_or_else(PoisonError::into_inner)
}
