//! The kernel side: loads the eBPF object, adopts or creates its pinned maps and links, attaches
//! the programs at the cgroup v2 root, and hands out the maps (the counting buffers the drain
//! reads, the `TRANSLATED` trie the conntrack reader fills). Also the capabilities it needs.
//!
//! In: the map sizes and pin directory from the config, the compiled object and the ABI table
//! of `agent-common` (map names, kinds, sizes). Out: `Kernel` (attached programs),
//! `KernelMaps` (what `drain` reads through `CountingBuffers`), `TranslatedTrie`.

pub mod batch;
pub mod buffers;
pub mod load;
pub mod maps;
pub mod privileges;
pub mod sys;
pub mod trie;

pub use buffers::{sum_per_cpu, CountingBuffers, Undeleted};
pub use load::{
    cleanup, load, map_type, other_layout_dirs, pinned_maps, versioned_pin_dir, Attached, Kernel,
    KernelError, LoadOptions, Loaded, MapsOrigin, EBPF_OBJECT, PROGRAMS,
};
pub use maps::KernelMaps;
pub use trie::{translated_key, TranslatedTrie};
