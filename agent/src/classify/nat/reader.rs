//! The conntrack reader: a thread of its own that subscribes to conntrack's events, dumps the
//! table at start and after dropped events, feeds the NAT table and keeps the kernel's
//! `TRANSLATED` prefixes in step with what it learns.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use super::{
    conntrack::{ConntrackError, ConntrackSocket, Event, Received},
    lock, NatTable, SharedNat,
};
use crate::{
    config::{ConntrackMode, NatConfig},
    kernel::{privileges, TranslatedTrie},
    vocab::Registries,
};

/// Pause between batches of conntrack events (see `Reader::run`).
const EVENT_BATCH_NAP: Duration = Duration::from_millis(20);

/// `netcost_conntrack_*`, `netcost_nat_*` and `netcost_translated_*`: what the conntrack reader
/// sees and keeps.
#[derive(Clone, Default)]
pub struct ConntrackMetrics {
    events: Family<EventLabels, Counter>,
    resyncs: Counter,
    malformed: Counter,
    up: Gauge,
    nat_connections: Gauge,
    nat_table_full: Counter,
    served_full: Counter,
    translated_prefixes: Gauge,
    translated_errors: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

impl ConntrackMetrics {
    pub fn register(registries: &mut Registries) -> ConntrackMetrics {
        let m = ConntrackMetrics::default();
        let r = registries.live();
        r.register(
            "conntrack_events",
            "Conntrack events read (new, destroy) plus rows of dumps (dump)",
            m.events.clone(),
        );
        r.register(
            "conntrack_resyncs",
            "Full conntrack dumps after the kernel dropped events (ENOBUFS) or on the periodic resync",
            m.resyncs.clone(),
        );
        r.register(
            "conntrack_malformed",
            "Conntrack messages that could not be decoded (the reason is logged)",
            m.malformed.clone(),
        );
        r.register(
            "conntrack_up",
            "1 while the conntrack reader is subscribed to events",
            m.up.clone(),
        );
        r.register(
            "nat_connections",
            "Translated connections known (live, or destroyed and kept for their retention)",
            m.nat_connections.clone(),
        );
        r.register(
            "nat_table_full",
            "Translated connections not stored because nat.max_connections was reached",
            m.nat_table_full.clone(),
        );
        r.register(
            "served_ports_full",
            "Connections remote ends opened to us whose serving port was not remembered because its table was full (their bytes carry no port)",
            m.served_full.clone(),
        );
        r.register(
            "translated_prefixes",
            "Prefixes in the kernel's TRANSLATED trie (Service CIDRs, learned Service and node addresses)",
            m.translated_prefixes.clone(),
        );
        r.register(
            "translated_errors",
            "Prefixes that could not be added to or removed from the kernel's TRANSLATED trie",
            m.translated_errors.clone(),
        );
        m
    }

    fn events(&self, event: &'static str, n: u64) {
        self.events.get_or_create(&EventLabels { event }).inc_by(n);
    }
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
    metrics: ConntrackMetrics,
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
                        privileges::drop_all_except(&[privileges::CAP_NET_ADMIN])
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
    metrics: ConntrackMetrics,
    prefixes: i64,
}

impl Reader {
    fn start(
        options: &ResolverOptions,
        table: SharedNat,
        trie: TranslatedTrie,
        metrics: ConntrackMetrics,
    ) -> Result<Reader, ConntrackError> {
        if let Some(netns) = &options.netns {
            super::conntrack::enter_netns(netns)?;
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
        reader.metrics.up.set(1);
        Ok(reader)
    }

    fn dump(&mut self) -> Result<(), ConntrackError> {
        lock(&self.table).begin_dump();
        let (table, metrics) = (&self.table, &self.metrics);
        self.dumper.dump(|got| {
            metrics.events("dump", got.events.len() as u64);
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
                self.metrics.events(event, n);
            }
        }
        apply(&self.table, &self.metrics, got);
    }

    fn resync(&mut self) {
        self.metrics.resyncs.inc();
        if let Err(e) = self.dump() {
            tracing::warn!(error = %e, "conntrack dump failed; retrying at the next resync");
        }
    }
}

fn apply(table: &SharedNat, metrics: &ConntrackMetrics, got: Received) {
    for reason in &got.malformed {
        metrics.malformed.inc();
        tracing::warn!(%reason, "skipping a conntrack message");
    }
    let now = Instant::now();
    let mut t = lock(table);
    let full_before = t.stats.full;
    let served_before = t.served.full;
    for e in &got.events {
        t.apply(e, now);
    }
    metrics.nat_table_full.inc_by(t.stats.full - full_before);
    metrics.served_full.inc_by(t.served.full - served_before);
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

/// Starts reading conntrack (kube-proxy's NAT decisions) as `config` says. `auto` goes on
/// without it, saying so, when the kernel or our privileges do not allow it.
pub fn start(
    config: &NatConfig,
    trie: TranslatedTrie,
    metrics: ConntrackMetrics,
) -> Result<Option<SharedNat>, ConntrackError> {
    if config.conntrack == ConntrackMode::Off {
        tracing::info!(
            "nat.conntrack is off: Service traffic is classified by the address pods sent to"
        );
        return Ok(None);
    }
    let table = NatTable::new(
        config.service_cidrs.clone(),
        config.table_capacity,
        config.retention,
    )
    .shared();
    let options = ResolverOptions {
        netns: config.netns.clone(),
        receive_buffer: 8 * 1024 * 1024,
        resync: Duration::from_secs(300),
    };
    match spawn_resolver(options, table.clone(), trie, metrics) {
        Ok(_) => {
            let t = lock(&table);
            tracing::info!(
                connections = t.len() / 2,
                addresses = t.learned_addresses(),
                service_cidrs = config.service_cidrs.len(),
                "reading conntrack: Service and SNAT traffic is classified by the real remote end"
            );
            drop(t);
            Ok(Some(table))
        }
        Err(e) if config.conntrack == ConntrackMode::Auto => {
            tracing::warn!(error = %e, "conntrack unavailable: Service traffic is classified by the address pods sent to");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
