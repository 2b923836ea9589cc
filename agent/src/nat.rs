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

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use agent_common::FlowKey;

use crate::{
    conntrack::{Connection, ConntrackError, ConntrackSocket, Event, Received, Tuple},
    kernel::TranslatedTrie,
    metrics::{EventLabels, Metrics},
    pipeline::{local_addr, remote_addr},
    topology::Cidr,
};

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
}

pub type SharedNat = Arc<Mutex<NatTable>>;

/// Pause between batches of conntrack events (see `Reader::run`).
const EVENT_BATCH_NAP: Duration = Duration::from_millis(20);

/// How long an address nothing uses any more stays in the kernel's prefixes.
const LEARNED_IDLE: Duration = Duration::from_secs(600);

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
        let remote = remote_addr(key);
        let tuple = Tuple {
            protocol: key.protocol,
            src: local_addr(key),
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

/// Settings of the conntrack reader.
#[derive(Clone, Debug)]
pub struct ResolverOptions {
    /// Network namespace whose conntrack table to read (kube-proxy's: the node's). `None`: ours.
    pub netns: Option<std::path::PathBuf>,
    /// Socket receive buffer for events: what a burst of new connections can queue.
    pub receive_buffer: usize,
    /// Full dump this often, to catch what events missed.
    pub resync: Duration,
}

/// Reads conntrack into `table` and keeps the kernel's `TRANSLATED` prefixes in step, on a thread
/// of its own (its reads block). Returns once the first dump is in, so the first drain already
/// resolves connections that existed before the agent started.
pub fn spawn_resolver(
    options: ResolverOptions,
    table: SharedNat,
    trie: TranslatedTrie,
    metrics: Metrics,
) -> Result<std::thread::JoinHandle<()>, ConntrackError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || {
            let mut reader = match Reader::start(&options, table, trie, metrics) {
                Ok(r) => {
                    // From here on this thread needs CAP_NET_ADMIN alone: ctnetlink checks the
                    // sender's capability on every dump request (the resyncs).
                    if let Err(e) =
                        crate::privileges::drop_all_except(&[crate::privileges::CAP_NET_ADMIN])
                    {
                        tracing::warn!(error = %e, "the conntrack thread could not drop its other capabilities");
                    }
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            reader.run(&options);
        })
        .map_err(ConntrackError::Io)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConntrackError::Io(std::io::Error::other(
            "the conntrack thread ended before its first dump",
        ))),
    }
}

struct Reader {
    events: ConntrackSocket,
    dumper: ConntrackSocket,
    table: SharedNat,
    trie: TranslatedTrie,
    metrics: Metrics,
    prefixes: i64,
}

impl Reader {
    fn start(
        options: &ResolverOptions,
        table: SharedNat,
        trie: TranslatedTrie,
        metrics: Metrics,
    ) -> Result<Reader, ConntrackError> {
        if let Some(netns) = &options.netns {
            crate::conntrack::enter_netns(netns)?;
        }
        // Subscribe before dumping: a connection made in between shows up in one or both.
        let events = ConntrackSocket::events(options.receive_buffer, Duration::from_millis(500))?;
        let dumper = ConntrackSocket::dumper(Duration::from_secs(5))?;
        let mut reader = Reader {
            events,
            dumper,
            table,
            trie,
            metrics,
            prefixes: 0,
        };
        lock(&reader.table).add_node_addresses(local_addresses(), Instant::now());
        reader.dump()?;
        reader.metrics.conntrack_up.set(1);
        Ok(reader)
    }

    fn dump(&mut self) -> Result<(), ConntrackError> {
        lock(&self.table).begin_dump();
        let (table, metrics) = (&self.table, &self.metrics);
        self.dumper.dump(|got| {
            metrics
                .conntrack_events
                .get_or_create(&EventLabels { event: "dump" })
                .inc_by(got.events.len() as u64);
            apply(table, metrics, got);
        })?;
        lock(&self.table).end_dump(Instant::now());
        self.sync_trie();
        Ok(())
    }

    fn sync_trie(&mut self) {
        let (changes, connections) = {
            let mut t = lock(&self.table);
            t.purge(Instant::now());
            (t.take_changes(), t.len() / 2)
        };
        for cidr in &changes.add {
            match self.trie.insert(cidr) {
                Ok(()) => self.prefixes += 1,
                Err(e) => {
                    self.metrics.translated_errors.inc();
                    tracing::warn!(prefix = %cidr, error = %e, "cannot add a translated prefix: connections to it are counted per remote, by the Service address");
                }
            }
        }
        for cidr in &changes.remove {
            if self.trie.remove(cidr).is_ok() {
                self.prefixes -= 1;
            }
        }
        self.metrics.translated_prefixes.set(self.prefixes);
        self.metrics.nat_connections.set(connections as i64);
    }

    fn run(&mut self, options: &ResolverOptions) {
        let mut last_resync = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            // Wait for the first event, then take whatever else is queued, then nap: a storm of
            // new connections costs a wakeup per batch, not one per event (each event is its own
            // datagram). Resolution is needed only at the next drain, seconds away.
            let mut blocking = true;
            loop {
                let got = if blocking {
                    self.events.recv()
                } else {
                    self.events.try_recv()
                };
                blocking = false;
                match got {
                    Ok(got) => self.take(got),
                    Err(ConntrackError::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // We fell behind and the kernel dropped events: read the whole table again.
                        tracing::warn!(
                            "conntrack events were dropped (ENOBUFS): resynchronising with a dump"
                        );
                        self.resync();
                        last_resync = Instant::now();
                    }
                    Err(ConntrackError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading conntrack events");
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                }
            }
            if last_sync.elapsed() >= Duration::from_millis(500) {
                self.sync_trie();
                last_sync = Instant::now();
            }
            if last_resync.elapsed() >= options.resync {
                lock(&self.table).add_node_addresses(local_addresses(), Instant::now());
                self.resync();
                last_resync = Instant::now();
            }
            std::thread::sleep(EVENT_BATCH_NAP);
        }
    }

    fn take(&mut self, got: Received) {
        let (mut new, mut destroy) = (0, 0);
        for e in &got.events {
            match e {
                Event::New(_) => new += 1,
                Event::Destroy(_) => destroy += 1,
            }
        }
        for (event, n) in [("new", new), ("destroy", destroy)] {
            if n > 0 {
                self.metrics
                    .conntrack_events
                    .get_or_create(&EventLabels { event })
                    .inc_by(n);
            }
        }
        apply(&self.table, &self.metrics, got);
    }

    fn resync(&mut self) {
        self.metrics.conntrack_resyncs.inc();
        if let Err(e) = self.dump() {
            tracing::warn!(error = %e, "conntrack dump failed; retrying at the next resync");
        }
    }
}

fn apply(table: &SharedNat, metrics: &Metrics, got: Received) {
    for reason in &got.malformed {
        metrics.conntrack_malformed.inc();
        tracing::warn!(%reason, "skipping a conntrack message");
    }
    let now = Instant::now();
    let mut t = lock(table);
    let full_before = t.stats.full;
    for e in &got.events {
        t.apply(e, now);
    }
    metrics.nat_table_full.inc_by(t.stats.full - full_before);
}

/// This network namespace's own addresses (what SNAT rewrites sources to), without loopback and
/// link-local ones (never a remote end across the network).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it says.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
            let addr = match family {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if let Some(a) = addr {
                let link_local = match a {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
                };
                if !a.is_loopback() && !link_local && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4};

    use crate::conntrack::test_tuple as t;

    /// pod 10.0.1.2:sport → ClusterIP 172.20.0.10:80, DNATed to a backend.
    fn to_service(sport: u16, backend: &str) -> Connection {
        Connection {
            original: t("10.0.1.2", sport, "172.20.0.10", 80),
            reply: t(backend, 8080, "10.0.1.2", sport),
        }
    }

    fn v4(a: &str) -> [u32; 4] {
        let o = a.parse::<std::net::Ipv4Addr>().unwrap().octets();
        [u32::from_ne_bytes(o), 0, 0, 0]
    }

    /// The flow key the pod's socket produces for packets of that connection.
    fn key(local: &str, lport: u16, remote: &str, rport: u16, direction: u8) -> FlowKey {
        let mut k = FlowKey::new(7, v4(remote), FAMILY_IPV4, direction);
        k.local = v4(local);
        k.local_port = lport.to_be();
        k.remote_port = rport.to_be();
        k.protocol = 6;
        k
    }

    fn table() -> NatTable {
        NatTable::new(
            vec!["172.20.0.0/16".parse().unwrap()],
            1_000_000,
            Duration::from_secs(30),
        )
    }

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    #[test]
    fn service_connections_resolve_to_the_chosen_backend_both_ways() {
        let mut nat = table();
        let now = Instant::now();
        nat.apply(&Event::New(to_service(40_000, "10.0.16.10")), now);
        nat.apply(&Event::New(to_service(40_001, "10.0.2.10")), now);
        let out = key("10.0.1.2", 40_000, "172.20.0.10", 80, DIRECTION_EGRESS);
        let back = key("10.0.1.2", 40_000, "172.20.0.10", 80, DIRECTION_INGRESS);
        let want = Resolution::Translated {
            remote: ip("10.0.16.10"),
            outbound: true,
        };
        assert_eq!(nat.resolve(&out), want);
        assert_eq!(nat.resolve(&back), want);
        assert_eq!(
            nat.resolve(&key("10.0.1.2", 40_001, "172.20.0.10", 80, 0)),
            Resolution::Translated {
                remote: ip("10.0.2.10"),
                outbound: true
            }
        );
        // A Service address without a known connection, and a plain address.
        assert_eq!(
            nat.resolve(&key("10.0.1.2", 40_002, "172.20.0.10", 80, 0)),
            Resolution::Unresolved
        );
        assert_eq!(
            nat.resolve(&key("10.0.1.2", 40_003, "10.0.2.10", 80, 0)),
            Resolution::Direct
        );
    }

    #[test]
    fn nodeport_with_snat_resolves_to_the_outside_client_for_the_local_backend() {
        let mut nat = table();
        let now = Instant::now();
        nat.add_node_addresses([ip("10.0.0.1"), ip("10.0.1.1")], now);
        // 203.0.113.10:5555 → node 10.0.0.1:30080, DNAT to pod 10.0.1.2:5001, SNAT to 10.0.1.1.
        let c = Connection {
            original: t("203.0.113.10", 5555, "10.0.0.1", 30080),
            reply: t("10.0.1.2", 5001, "10.0.1.1", 61_000),
        };
        nat.apply(&Event::New(c), now);
        // The pod's socket sees 10.0.1.1:61000 as its peer.
        assert_eq!(
            nat.resolve(&key(
                "10.0.1.2",
                5001,
                "10.0.1.1",
                61_000,
                DIRECTION_INGRESS
            )),
            Resolution::Translated {
                remote: ip("203.0.113.10"),
                outbound: false
            }
        );
        // Node addresses go to the kernel once, and are never a Service address.
        let changes = nat.take_changes();
        assert!(changes.add.contains(&Cidr::host(ip("10.0.1.1"))));
        assert!(changes.add.contains(&Cidr::host(ip("10.0.0.1"))));
        assert_eq!(
            nat.resolve(&key("10.0.1.2", 5001, "10.0.1.1", 9, 0)),
            Resolution::Direct
        );
    }

    #[test]
    fn closed_connections_stay_resolvable_for_the_retention_then_go() {
        let mut nat = table();
        let t0 = Instant::now();
        let c = to_service(40_000, "10.0.16.10");
        nat.apply(&Event::New(c), t0);
        nat.apply(&Event::Destroy(c), t0 + Duration::from_secs(1));
        nat.purge(t0 + Duration::from_secs(30));
        let k = key("10.0.1.2", 40_000, "172.20.0.10", 80, 0);
        assert!(matches!(nat.resolve(&k), Resolution::Translated { .. }));
        nat.purge(t0 + Duration::from_secs(32));
        assert_eq!(nat.resolve(&k), Resolution::Unresolved);
        assert!(nat.is_empty());
    }

    #[test]
    fn a_destroy_without_its_new_still_resolves_and_a_dump_catches_missed_destroys() {
        let mut nat = table();
        let t0 = Instant::now();
        nat.apply(&Event::Destroy(to_service(1, "10.0.16.10")), t0);
        assert!(matches!(
            nat.resolve(&key("10.0.1.2", 1, "172.20.0.10", 80, 0)),
            Resolution::Translated { .. }
        ));
        nat.apply(&Event::New(to_service(2, "10.0.2.10")), t0);
        nat.apply(&Event::New(to_service(3, "10.0.2.10")), t0);
        // A dump lists only connection 3: 2 was destroyed while events were lost.
        nat.begin_dump();
        nat.apply(&Event::New(to_service(3, "10.0.2.10")), t0);
        nat.end_dump(t0);
        nat.purge(t0 + Duration::from_secs(31));
        assert_eq!(nat.len(), 2, "only connection 3 is left");
        assert!(matches!(
            nat.resolve(&key("10.0.1.2", 3, "172.20.0.10", 80, 0)),
            Resolution::Translated { .. }
        ));
    }

    #[test]
    fn churn_leaves_nothing_behind_and_capacity_is_counted() {
        let mut nat = NatTable::new(vec![], 2_000, Duration::from_secs(1));
        let t0 = Instant::now();
        for round in 0..20u16 {
            for i in 0..500u16 {
                let c = Connection {
                    original: t("10.0.1.2", i, &format!("172.20.{}.{}", round, i % 200), 80),
                    reply: t("10.0.16.10", 8080, "10.0.1.2", i),
                };
                nat.apply(&Event::New(c), t0);
                nat.apply(&Event::Destroy(c), t0);
            }
            nat.purge(t0 + Duration::from_secs(2));
        }
        assert_eq!(nat.len(), 0);
        assert_eq!(nat.stats.full, 0);
        // Learned Service addresses go once idle long enough.
        let learned = nat.learned_addresses();
        assert!(learned > 0);
        nat.purge(t0 + LEARNED_IDLE + Duration::from_secs(5));
        assert_eq!(nat.learned_addresses(), 0);
        let changes = nat.take_changes();
        assert_eq!(changes.add.len(), changes.remove.len());
        // Capacity: 1,000 connections fit, the next is counted.
        for i in 0..1_001u16 {
            nat.apply(&Event::New(to_service(i, "10.0.16.10")), t0);
        }
        assert_eq!((nat.len(), nat.stats.full), (2_000, 1));
    }
}
