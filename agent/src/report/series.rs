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

/// Dollars, with more digits below a cent.
pub fn usd(d: f64) -> String {
    if d.abs() >= 0.01 || d == 0.0 {
        format!("${d:.2}")
    } else {
        format!("${d:.5}")
    }
}

/// A table: aligned columns, or Markdown's pipes.
pub fn grid<H: AsRef<str>>(out: &mut String, markdown: bool, head: &[H], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        out.push_str("(none)\n\n");
        return;
    }
    let mut widths: Vec<usize> = head.iter().map(|h| h.as_ref().chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        if markdown {
            format!("| {} |\n", padded.join(" | "))
        } else {
            format!("{}\n", padded.join("  ").trim_end())
        }
    };
    out.push_str(&line(head.iter().map(|h| h.as_ref().to_owned()).collect()));
    if markdown {
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    }
    for r in rows {
        out.push_str(&line(r));
    }
    out.push('\n');
}

/// A label's value, empty when the series has none.
pub fn label<'l>(l: &'l Labels, k: &str) -> &'l str {
    l.get(k).map_or("", String::as_str)
}
