//! Units and the health line, shared by the plain snapshot and the live screen.

pub use crate::report::usd;

use super::snapshot::Health;

/// Bytes the way people read them (binary units).
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn rate(b: f64) -> String {
    format!("{}/s", bytes(b))
}

/// One line: drains, maps, held/overflow/lost, Kubernetes, conntrack, checkpoint, start.
pub fn health_line(h: &Health) -> String {
    let drains = match h.drain_interval {
        Some(i) => format!(
            "drains {:.0} every {i:.1} s, {:.1} ms each",
            h.drains,
            h.drain_seconds * 1000.0
        ),
        None => format!(
            "drains {:.0}, {:.1} ms each",
            h.drains,
            h.drain_seconds * 1000.0
        ),
    };
    let maps: Vec<String> = h
        .maps
        .iter()
        .map(|(m, e, c)| format!("{m} {e:.0}/{c:.0}"))
        .collect();
    let kube = if h.kubernetes.is_empty() {
        "kubernetes off".to_owned()
    } else if h.kubernetes.iter().all(|(_, s)| *s) {
        "kubernetes synced".to_owned()
    } else {
        let waiting: Vec<&str> = h
            .kubernetes
            .iter()
            .filter(|(_, s)| !s)
            .map(|(r, _)| r.as_str())
            .collect();
        format!("kubernetes syncing {}", waiting.join(","))
    };
    let conntrack = match h.conntrack_up {
        Some(true) => "conntrack up",
        Some(false) => "conntrack DOWN",
        None => "conntrack off",
    };
    let checkpoint = match (h.checkpoint_bytes, h.checkpoint_errors) {
        (_, e) if e > 0.0 => format!("checkpoint {e:.0} errors"),
        (Some(b), _) => format!("checkpoint {}", bytes(b)),
        (None, _) => "no checkpoint".to_owned(),
    };
    let mut line = format!(
        "{drains}{} | maps {} | held {} overflow {} lost {} | {kube} | {conntrack} | {checkpoint} | start: {}",
        if h.drain_errors > 0.0 {
            format!(" ({:.0} FAILED)", h.drain_errors)
        } else {
            String::new()
        },
        maps.join(", "),
        bytes(h.held_bytes),
        bytes(h.overflow_bytes),
        bytes(h.lost_bytes),
        if h.start.is_empty() { "?" } else { &h.start },
    );
    if h.early_drains > 0.0 {
        line.push_str(&format!(
            " | {:.0} early drains (buffer half full)",
            h.early_drains
        ));
    }
    if !h.priced {
        line.push_str(&format!(
            " | unpriced: pass --region ({} counted, not priced)",
            bytes(h.unpriced_bytes)
        ));
    }
    line
}
