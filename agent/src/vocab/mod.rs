//! The ground floor: the words every stage speaks — which way bytes went, who owns them, where
//! an address is, what a destination is, the label sets the series carry — and the small helpers
//! they share. It imports no stage; every stage may import it.
//!
//! In: nothing of the agent. Out: `Direction`, `Owner`, `PodLabels`, `TrafficLabels`,
//! `Destination`, `Route`, `TrafficClass`, `Place`, `Cidr`, `PrefixTable`, `clean`, and
//! `Registries`, where every metric group registers itself.

mod labels;
mod metrics;
mod net;
mod peer;
mod place;
pub mod yaml;

pub use labels::{
    check_service_tag, clean, owned, Destination, Direction, Owner, PodLabels, Route,
    TrafficLabels, MAX_VALUE_BYTES,
};
pub use metrics::{DollarCounter, DollarGauge, Registries};
pub use net::{cidr_list, Cidr, CidrError, PrefixTable};
pub use peer::{external_group, Peer, PeerKind};
pub use place::{classify_place, Place, TrafficClass};

/// Milliseconds since the Unix epoch (0 if the clock is before it): for health stamps kept in
/// atomics.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Largest input file read (price tables, service ranges, Kubecost's config are KBs).
pub const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// A file the agent reads from outside: its name (for errors) and its text, refused before it
/// is read when it is larger than `MAX_INPUT_BYTES`. The error comes with the name too.
pub fn read_input(path: &std::path::Path) -> Result<(String, String), (String, std::io::Error)> {
    let name = path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|e| (name.clone(), e))?
        .len();
    if len > MAX_INPUT_BYTES {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {MAX_INPUT_BYTES} such a file may have"),
        );
        return Err((name, e));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err((name, e)),
    }
}
