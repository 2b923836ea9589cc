//! The ABI shared by the kernel programs (`agent-ebpf`) and the agent, plus the per-packet logic
//! written against small traits so that it runs — and is unit-tested — in plain `cargo test`.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding, so its layout
//! is the same in the BPF object and in user space, and no uninitialised byte ever reaches a hash.
#![no_std]

pub mod account;
mod maps;
pub mod wire;

pub use maps::{
    map_spec, translated_prefix_len, MapEntries, MapKind, MapSpec, MAPS, TRANSLATED_HOST_LOOKUP,
};

/// Bump when any map layout or meaning below changes; user space refuses an object of another
/// version and later pins live under a path that carries it.
pub const ABI_VERSION: u32 = 4;

/// Which way a packet went, seen from the local socket.
pub const DIRECTION_EGRESS: u8 = 0;
pub const DIRECTION_INGRESS: u8 = 1;

/// `FlowKey::family` values.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Default capacities. Both are overridable at load time (`EbpfLoader::set_max_entries`).
pub const DEFAULT_FLOW_ENTRIES: u32 = 65_536;
pub const DEFAULT_OVERFLOW_ENTRIES: u32 = 4_096;

/// Names of the maps, used by the loader and the drain.
pub const MAP_FLOWS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];
pub const MAP_OVERFLOW: [&str; 2] = ["OVERFLOW_0", "OVERFLOW_1"];
pub const MAP_LOST: &str = "LOST";
pub const MAP_CONTROL: &str = "CONTROL";
pub const MAP_CACHE: &str = "CACHE";
pub const MAP_TRANSLATED: &str = "TRANSLATED";
/// Per buffer: flow entries each owner (cgroup) created in it, so that one owner cannot take the
/// whole flow map (see `CONTROL_FLOW_QUOTA`).
pub const MAP_QUOTA: [&str; 2] = ["QUOTA_0", "QUOTA_1"];
/// Per-CPU count of flow entries created in each buffer: how full it is, read without walking it
/// (user space drains early when a buffer fills up).
pub const MAP_FILL: &str = "FILL";
pub const FILL_ENTRIES: u32 = 2;

/// Owners (cgroups) that can create flow entries in one buffer; the owners beyond it are not
/// held to their quota.
pub const DEFAULT_QUOTA_ENTRIES: u32 = 8_192;

/// Capacity of `TRANSLATED`: service CIDRs, learned service addresses and the node's own
/// addresses. User space counts what it could not insert.
pub const DEFAULT_TRANSLATED_ENTRIES: u32 = 16_384;

/// `CONTROL[CONTROL_ACTIVE]` holds the index (0 or 1) of the buffer the programs write to. The
/// drain flips it, waits for an RCU grace period (every program that read the old index has then
/// returned) and reads and empties the idle buffer, which nothing writes any more: no byte added
/// between a read and a delete can be lost.
pub const CONTROL_ACTIVE: u32 = 0;
/// `CONTROL[CONTROL_FLOW_QUOTA]`: most flow entries one owner may create in a buffer (0: no
/// limit). Beyond it the owner's new flows go to its overflow entry — it keeps its bytes, loses
/// their remote addresses — and the map keeps room for every other owner.
pub const CONTROL_FLOW_QUOTA: u32 = 1;
pub const CONTROL_ENTRIES: u32 = 2;

/// One counting key: the socket's cgroup (the workload identity), the remote address and the
/// direction — and, for connections whose remote address is one that NAT rewrites (a Service
/// address, see `TranslatedKey`), the rest of the connection's tuple, so user space can find the
/// conntrack entry that says where the bytes really went. Every other key has `local`, the ports
/// and `protocol` zeroed: one entry per remote address, whatever the number of connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// cgroup v2 id of the socket that sent or received the packet (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// Remote address as the packet carries it (network byte order) in 32-bit words, so the
    /// kernel program moves it with four loads and stores: an IPv4 address in word 0 and zeros
    /// after it, or an IPv6 address.
    pub remote: [u32; 4],
    /// Local address, same layout; zero unless the key is per connection.
    pub local: [u32; 4],
    /// Ports in network byte order as the packet carries them; zero unless per connection.
    pub local_port: u16,
    pub remote_port: u16,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// `DIRECTION_EGRESS` or `DIRECTION_INGRESS`.
    pub direction: u8,
    /// IP protocol number (TCP, UDP, SCTP…) of a per-connection key; 0 otherwise.
    pub protocol: u8,
    // Padding as whole fields, not byte arrays: the BPF backend zeroes arrays with a memset loop.
    pub _pad: u8,
}

/// Key of the `TRANSLATED` longest-prefix-match trie: the family in the first word, then the
/// address, so one trie holds IPv4 and IPv6 prefixes (an IPv4 /p prefix has length 32 + p).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TranslatedKey {
    pub family: u32,
    pub addr: [u32; 4],
}

impl TranslatedKey {
    pub const fn of(key: &FlowKey) -> TranslatedKey {
        TranslatedKey {
            family: key.family as u32,
            addr: key.remote,
        }
    }
}

/// Per-identity fallback key used when a `FlowKey` cannot be inserted (flow map full or busy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OverflowKey {
    pub cgroup_id: u64,
    pub direction: u8,
    pub _pad: u8,
    pub _pad1: u16,
    pub _pad2: u32,
}

/// Wire bytes and wire packets (segments), added in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub bytes: u64,
    pub packets: u64,
}

impl Counter {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64, packets: u64) {
        self.bytes = self.bytes.wrapping_add(bytes);
        self.packets = self.packets.wrapping_add(packets);
    }
}

/// `CACHE` is a per-CPU array of write-combining slots, one per (buffer, direction): consecutive
/// packets of one flow on a CPU add to the slot, and only a different key flushes it into the flow
/// map — one array lookup instead of a hash lookup for bulk traffic. The drain reads and clears
/// the idle buffer's slots together with its maps.
pub const CACHE_ENTRIES: u32 = 4;

pub const fn cache_index(buffer: u32, direction: u8) -> u32 {
    buffer * 2 + direction as u32
}

/// One write-combining slot. Valid when `counter.packets > 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: FlowKey,
    pub counter: Counter,
    /// Set while a program on this CPU updates the slot: a program that interrupts it on the same
    /// CPU (a softirq sending or receiving) leaves the slot alone and goes to the maps directly.
    pub busy: u64,
}

/// `LOST` is a per-CPU array indexed by direction: bytes that could be stored neither under their
/// flow nor under their identity's overflow entry. An array slot always exists, so this last
/// resort cannot fail; it is never reset, user space reads it as a monotonic total.
pub const LOST_ENTRIES: u32 = 2;

impl FlowKey {
    /// A per-remote key (no connection detail).
    pub const fn new(cgroup_id: u64, remote: [u32; 4], family: u8, direction: u8) -> Self {
        FlowKey {
            cgroup_id,
            remote,
            local: [0; 4],
            local_port: 0,
            remote_port: 0,
            family,
            direction,
            protocol: 0,
            _pad: 0,
        }
    }

    /// Whether the key carries the connection's tuple.
    pub const fn is_connection(&self) -> bool {
        self.protocol != 0
    }

    /// The same key without the connection detail.
    #[inline(always)]
    pub const fn per_remote(&self) -> FlowKey {
        FlowKey::new(self.cgroup_id, self.remote, self.family, self.direction)
    }

    /// The local address as 16 bytes (IPv4: the first 4).
    pub fn local_octets(&self) -> [u8; 16] {
        words_to_octets(&self.local)
    }

    /// The remote address as the 16 bytes it has on the wire (IPv4: the first 4).
    pub fn remote_octets(&self) -> [u8; 16] {
        words_to_octets(&self.remote)
    }

    /// The remote address; the inverse of `addr_words`.
    pub fn remote_addr(&self) -> core::net::IpAddr {
        key_addr(self.family, self.remote_octets())
    }

    /// The local address of a per-connection key.
    pub fn local_addr(&self) -> core::net::IpAddr {
        key_addr(self.family, self.local_octets())
    }
}

fn key_addr(family: u8, o: [u8; 16]) -> core::net::IpAddr {
    if family == FAMILY_IPV4 {
        core::net::IpAddr::V4(core::net::Ipv4Addr::new(o[0], o[1], o[2], o[3]))
    } else {
        core::net::IpAddr::V6(core::net::Ipv6Addr::from(o))
    }
}

fn words_to_octets(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// An address as a key stores it: its family and its bytes in four words (IPv4: the first).
/// The inverse of `remote_octets`/`local_octets`.
pub fn addr_words(addr: core::net::IpAddr) -> (u8, [u32; 4]) {
    let (family, octets) = match addr {
        core::net::IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            (FAMILY_IPV4, o)
        }
        core::net::IpAddr::V6(a) => (FAMILY_IPV6, a.octets()),
    };
    let words = core::array::from_fn(|i| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    });
    (family, words)
}

impl OverflowKey {
    pub const fn new(cgroup_id: u64, direction: u8) -> Self {
        OverflowKey {
            cgroup_id,
            direction,
            _pad: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::OverflowKey {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::CacheEntry {}
    unsafe impl aya::Pod for super::TranslatedKey {}
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn abi_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 8 + 16 + 16 + 2 + 2 + 1 + 1 + 1 + 1);
        assert_eq!(size_of::<TranslatedKey>(), 20);
        assert_eq!(align_of::<FlowKey>(), 8);
        assert_eq!(size_of::<OverflowKey>(), 16);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<CacheEntry>(), 48 + 16 + 8);
    }

    #[test]
    fn addresses_round_trip_through_key_words() {
        for text in ["203.0.113.5", "2001:db8::7"] {
            let addr: core::net::IpAddr = text.parse().unwrap();
            let (family, words) = addr_words(addr);
            let key = FlowKey::new(1, words, family, DIRECTION_EGRESS);
            let o = key.remote_octets();
            let back: core::net::IpAddr = if family == FAMILY_IPV4 {
                [o[0], o[1], o[2], o[3]].into()
            } else {
                o.into()
            };
            assert_eq!(back, addr, "{text}");
            assert_eq!(family == FAMILY_IPV4, addr.is_ipv4());
        }
    }

    // Moved from the agent's pipeline with the conversion it tests.
    #[test]
    fn remote_addresses_round_trip() {
        let v4 = [u32::from_ne_bytes([203, 0, 113, 5]), 0, 0, 0];
        let k = FlowKey::new(1, v4, FAMILY_IPV4, 0);
        assert_eq!(
            k.remote_addr(),
            "203.0.113.5".parse::<core::net::IpAddr>().unwrap()
        );
        let v6: core::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let o = v6.octets();
        let words = core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        });
        let k = FlowKey::new(1, words, FAMILY_IPV6, 1);
        assert_eq!(k.remote_addr(), core::net::IpAddr::V6(v6));
    }

    #[test]
    fn map_table_names_every_map_once() {
        for (i, m) in MAPS.iter().enumerate() {
            assert_eq!(map_spec(m.name), Some(m));
            assert!(MAPS[..i].iter().all(|o| o.name != m.name), "{}", m.name);
        }
    }
}
