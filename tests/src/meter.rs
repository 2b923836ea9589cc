//! The independent truth: wire bytes as a NIC would put them on the wire, counted per segment.
//!
//! An HTB qdisc on the egress side of a link, one class per traffic class with u32 filters on
//! addresses. For a GSO skb the kernel sets the qdisc packet length to the total of its segments,
//! each with its own headers, and counts `gso_segs` packets; HTB's class statistics therefore count
//! what the segmented packets weigh whatever the offload settings. The link is Ethernet, so each
//! packet carries 14 bytes of L2 header, subtracted to get L3 (IP) bytes — what AWS bills. skb-length
//! counters (iptables, interface statistics) would undercount bulk TCP by ~3 %.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::in_ns;

const ETH_HEADER: u64 = 14;

/// One filter: `("ip", "match ip dst 10.0.2.0/24")` or `("ipv6", "match ip6 src fd00:0:2::/64")`.
pub type Filter = (&'static str, String);

pub struct Meter {
    ns: String,
    dev: String,
    classes: Vec<(String, u32)>,
}

impl Meter {
    /// Installs an HTB root on `dev` in `ns`, with one class per `(name, filters)`. Rates are far
    /// above what veths carry: the classes count, they never shape.
    pub fn install(ns: &str, dev: &str, classes: &[(&str, Vec<Filter>)]) -> Result<Meter> {
        let tc = |args: &str| -> Result<()> {
            let mut argv = vec!["tc"];
            argv.extend(args.split_whitespace());
            in_ns(ns, &argv).map(drop)
        };
        tc(&format!("qdisc replace dev {dev} root handle 1: htb"))?;
        let mut out = Vec::new();
        for (i, (name, filters)) in classes.iter().enumerate() {
            let minor = 10 + i as u32;
            tc(&format!(
                "class add dev {dev} parent 1: classid 1:{minor:x} htb rate 100gbit ceil 100gbit"
            ))?;
            for (proto, spec) in filters {
                // One priority per protocol: the kernel keeps one filter chain per (prio, protocol).
                let prio = if *proto == "ipv6" { 2 } else { 1 };
                tc(&format!(
                    "filter add dev {dev} parent 1: protocol {proto} prio {prio} u32 {spec} flowid 1:{minor:x}"
                ))?;
            }
            out.push((name.to_string(), minor));
        }
        Ok(Meter {
            ns: ns.to_owned(),
            dev: dev.to_owned(),
            classes: out,
        })
    }

    /// IP bytes per class name. Fails if a class dropped packets (a drop after our counter would
    /// make the two measures disagree for a reason that is not counting).
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let text = in_ns(&self.ns, &["tc", "-s", "class", "show", "dev", &self.dev])?;
        let stats = parse_htb_stats(&text)?;
        let mut out = BTreeMap::new();
        for (name, minor) in &self.classes {
            let (bytes, packets, dropped) = stats
                .get(minor)
                .copied()
                .with_context(|| format!("class 1:{minor:x} missing on {}", self.dev))?;
            if dropped > 0 {
                bail!("class {name} on {} dropped {dropped} packets", self.dev);
            }
            out.insert(name.clone(), bytes - ETH_HEADER * packets);
        }
        Ok(out)
    }
}

/// `class htb 1:10 root ...` followed by ` Sent 123 bytes 4 pkt (dropped 0, ...)`.
fn parse_htb_stats(text: &str) -> Result<BTreeMap<u32, (u64, u64, u64)>> {
    let mut out = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 3 && words[0] == "class" && words[1] == "htb" {
            current = words[2]
                .strip_prefix("1:")
                .and_then(|m| u32::from_str_radix(m, 16).ok());
        } else if words.first() == Some(&"Sent") {
            if let Some(minor) = current.take() {
                let bytes = words.get(1).context("Sent without bytes")?.parse()?;
                let packets = words.get(3).context("Sent without packets")?.parse()?;
                let dropped = words
                    .get(6)
                    .map(|w| w.trim_end_matches(',').parse().unwrap_or(0))
                    .unwrap_or(0);
                out.insert(minor, (bytes, packets, dropped));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tc_class_statistics() {
        let text = "class htb 1:10 root prio 0 rate 100Gbit ceil 100Gbit burst 0b cburst 0b \n Sent 15140 bytes 10 pkt (dropped 0, overlimits 0 requeues 0) \n backlog 0b 0p requeues 0\n\
class htb 1:1a root prio 0 rate 100Gbit ceil 100Gbit\n Sent 700 bytes 5 pkt (dropped 2, overlimits 0 requeues 0)\n";
        let s = parse_htb_stats(text).unwrap();
        assert_eq!(s[&0x10], (15140, 10, 0));
        assert_eq!(s[&0x1a], (700, 5, 2));
    }
}
