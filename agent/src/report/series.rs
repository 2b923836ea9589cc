//! The report's ground floor: one series as a source gives it, and the units people read.

use std::collections::{BTreeMap, HashMap};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub value: f64,
}

/// GiB, or MiB below a hundredth of one.
pub fn gib(bytes: f64) -> String {
    let g = bytes / (1u64 << 30) as f64;
    if g >= 0.01 {
        format!("{g:.2} GiB")
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

/// The remote end of a destination series, as a person would name it; `pods_by_ip` names
/// addresses kube-state-metrics knows.
pub fn describe_remote(l: &Labels, pods_by_ip: &HashMap<String, String>) -> String {
    let get = |k: &str| l.get(k).map_or("", String::as_str);
    let zone = match get("remote_zone") {
        "" => String::new(),
        z => format!(" ({z})"),
    };
    match get("remote_kind") {
        "service" => format!(
            "service {}/{}{zone}",
            get("remote_namespace"),
            get("remote_name")
        ),
        "pod" => format!(
            "pod {}/{}{zone}",
            get("remote_namespace"),
            get("remote_name")
        ),
        "node" => format!("node {}{zone}", get("remote_name")),
        "aws_service" => get("remote_name").to_owned(),
        "address" => match pods_by_ip.get(get("remote_address")) {
            Some(pod) => format!("{pod}{zone}"),
            None => format!("{}{zone}", get("remote_address")),
        },
        "external" => format!("internet {}", get("remote_address")),
        _ => "(all other)".to_owned(),
    }
}
