//! The maps of the kernel object, defined once: names, kinds, key and value sizes, capacities
//! and which are pinned. The eBPF program declares each map with these types and sizes (a test
//! of the agent holds the compiled object against this table); user space checks pinned maps
//! against it before adopting them.

use crate::{
    CacheEntry, Counter, FlowKey, OverflowKey, TranslatedKey, CACHE_ENTRIES, CONTROL_ENTRIES,
    DEFAULT_QUOTA_ENTRIES, DEFAULT_TRANSLATED_ENTRIES, FILL_ENTRIES, LOST_ENTRIES, MAP_CACHE,
    MAP_CONTROL, MAP_FILL, MAP_FLOWS, MAP_LOST, MAP_OVERFLOW, MAP_QUOTA, MAP_TRANSLATED,
};

/// Kinds of map, as the kernel names them (`BPF_MAP_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    PerCpuArray,
    Hash,
    PerCpuHash,
    LpmTrie,
}

/// How many entries a map has: fixed by the ABI, or set at load time from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapEntries {
    Fixed(u32),
    /// `maps.flow_entries` (default `DEFAULT_FLOW_ENTRIES`).
    Flows,
    /// `maps.overflow_entries` (default `DEFAULT_OVERFLOW_ENTRIES`).
    Overflow,
}

/// One map of the object: the single definition user space checks pinned maps and the compiled
/// object against (the kernel side declares each with these types and sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub entries: MapEntries,
    /// Kept in bpffs across restarts of the agent. `TRANSLATED` is not: each agent fills its own
    /// from conntrack before its programs take over the links.
    pub pinned: bool,
}

impl MapSpec {
    /// The capacity with the configured sizes.
    pub const fn max_entries(&self, flow_entries: u32, overflow_entries: u32) -> u32 {
        match self.entries {
            MapEntries::Fixed(n) => n,
            MapEntries::Flows => flow_entries,
            MapEntries::Overflow => overflow_entries,
        }
    }
}

const fn spec(
    name: &'static str,
    kind: MapKind,
    key_size: usize,
    value_size: usize,
    entries: MapEntries,
    pinned: bool,
) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: key_size as u32,
        value_size: value_size as u32,
        entries,
        pinned,
    }
}

const COUNTER: usize = core::mem::size_of::<Counter>();

/// Every map of the object.
pub const MAPS: [MapSpec; 11] = [
    spec(
        MAP_CONTROL,
        MapKind::Array,
        4,
        4,
        MapEntries::Fixed(CONTROL_ENTRIES),
        true,
    ),
    spec(
        MAP_FLOWS[0],
        MapKind::PerCpuHash,
        core::mem::size_of::<FlowKey>(),
        COUNTER,
        MapEntries::Flows,
        true,
    ),
    spec(
        MAP_FLOWS[1],
        MapKind::PerCpuHash,
        core::mem::size_of::<FlowKey>(),
        COUNTER,
        MapEntries::Flows,
        true,
    ),
    spec(
        MAP_OVERFLOW[0],
        MapKind::PerCpuHash,
        core::mem::size_of::<OverflowKey>(),
        COUNTER,
        MapEntries::Overflow,
        true,
    ),
    spec(
        MAP_OVERFLOW[1],
        MapKind::PerCpuHash,
        core::mem::size_of::<OverflowKey>(),
        COUNTER,
        MapEntries::Overflow,
        true,
    ),
    spec(
        MAP_LOST,
        MapKind::PerCpuArray,
        4,
        COUNTER,
        MapEntries::Fixed(LOST_ENTRIES),
        true,
    ),
    spec(
        MAP_CACHE,
        MapKind::PerCpuArray,
        4,
        core::mem::size_of::<CacheEntry>(),
        MapEntries::Fixed(CACHE_ENTRIES),
        true,
    ),
    spec(
        MAP_QUOTA[0],
        MapKind::Hash,
        8,
        8,
        MapEntries::Fixed(DEFAULT_QUOTA_ENTRIES),
        true,
    ),
    spec(
        MAP_QUOTA[1],
        MapKind::Hash,
        8,
        8,
        MapEntries::Fixed(DEFAULT_QUOTA_ENTRIES),
        true,
    ),
    spec(
        MAP_FILL,
        MapKind::PerCpuArray,
        4,
        8,
        MapEntries::Fixed(FILL_ENTRIES),
        true,
    ),
    // An LPM trie key is the prefix length (u32) followed by the data.
    spec(
        MAP_TRANSLATED,
        MapKind::LpmTrie,
        4 + core::mem::size_of::<TranslatedKey>(),
        1,
        MapEntries::Fixed(DEFAULT_TRANSLATED_ENTRIES),
        false,
    ),
];

/// The map of that name.
pub fn map_spec(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name.as_bytes() == name.as_bytes())
}

/// Prefix length of a `TRANSLATED` key for an address prefix of `bits` (the family word comes
/// first and always matches whole).
pub const fn translated_prefix_len(bits: u8) -> u32 {
    32 + bits as u32
}

/// The prefix length that matches one whole address, IPv4 or IPv6, in `TRANSLATED`.
pub const TRANSLATED_HOST_LOOKUP: u32 = translated_prefix_len(128);
