//! Where a remote address is: same zone, another zone, another region, the internet — or a place
//! we cannot tell, which is reported as such rather than guessed.
//!
//! Topology is a source behind one trait: today a config file (`StaticTopology`); the Kubernetes
//! Node inventory plugs in behind the same trait.

use std::{fmt, net::IpAddr, str::FromStr};

/// The traffic classes netcost reports, in the order AWS prices them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficClass {
    /// Same availability zone, or never leaving the node (loopback, link-local): free.
    SameZone,
    /// Another zone of our region: $0.01/GB each way.
    CrossZone,
    /// Another region: charged to the sending region.
    CrossRegion,
    /// A public address outside every configured range.
    Internet,
    /// A private address (our VPC, RFC 1918, CGNAT, IPv6 ULA) in no configured zone: it cannot be
    /// internet, and which zone it is in is unknown.
    Unplaced,
    /// The remote address was not recorded (the flow map was full; the bytes went to the pod's
    /// overflow entry).
    Unknown,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 6] = [
        TrafficClass::SameZone,
        TrafficClass::CrossZone,
        TrafficClass::CrossRegion,
        TrafficClass::Internet,
        TrafficClass::Unplaced,
        TrafficClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::SameZone => "same_zone",
            TrafficClass::CrossZone => "cross_zone",
            TrafficClass::CrossRegion => "cross_region",
            TrafficClass::Internet => "internet",
            TrafficClass::Unplaced => "unplaced",
            TrafficClass::Unknown => "unknown",
        }
    }
}

pub trait Topology: Send + Sync {
    fn classify(&self, addr: IpAddr) -> TrafficClass;
}

/// An IPv4 or IPv6 prefix. IPv4 is kept as an IPv4-mapped IPv6 prefix so one comparison serves
/// both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    /// Prefix length in the IPv6 (mapped) space.
    bits: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CidrError(&'static str);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CidrError {}

fn mapped(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(bits: u8) -> u128 {
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits as u32)
    }
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let bits = match addr {
            IpAddr::V4(_) if prefix <= 32 => prefix + 96,
            IpAddr::V6(_) if prefix <= 128 => prefix,
            IpAddr::V4(_) => return Err(CidrError("IPv4 prefix length must be 0..=32")),
            IpAddr::V6(_) => return Err(CidrError("IPv6 prefix length must be 0..=128")),
        };
        Ok(Cidr {
            network: mapped(addr) & mask(bits),
            bits,
        })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        mapped(addr) & mask(self.bits) == self.network
    }

    pub fn prefix_bits(&self) -> u8 {
        self.bits
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                Some(
                    p.parse::<u8>()
                        .map_err(|_| CidrError("prefix length is not a number"))?,
                ),
            ),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError("not an IPv4 or IPv6 address"))?;
        let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Cidr::new(addr, prefix)
    }
}

/// What a configured prefix says about the addresses in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneEntry {
    /// `None` for a region-level entry (zone unknown).
    pub zone: Option<String>,
    pub region: String,
}

/// Topology from the config file.
#[derive(Clone, Debug)]
pub struct StaticTopology {
    region: String,
    zone: String,
    vpc: Vec<Cidr>,
    /// Sorted longest prefix first, so the first match is the most specific.
    entries: Vec<(Cidr, ZoneEntry)>,
}

/// Ranges that are never the internet.
const PRIVATE: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

impl StaticTopology {
    pub fn new(
        region: String,
        zone: String,
        mut vpc: Vec<Cidr>,
        mut entries: Vec<(Cidr, ZoneEntry)>,
    ) -> StaticTopology {
        vpc.extend(PRIVATE.iter().filter_map(|c| c.parse::<Cidr>().ok()));
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.bits));
        StaticTopology {
            region,
            zone,
            vpc,
            entries,
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }
}

fn never_leaves_node(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return never_leaves_node(IpAddr::V4(v4));
            }
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl Topology for StaticTopology {
    fn classify(&self, addr: IpAddr) -> TrafficClass {
        if never_leaves_node(addr) {
            return TrafficClass::SameZone;
        }
        if let Some((_, entry)) = self.entries.iter().find(|(c, _)| c.contains(addr)) {
            return match (&entry.zone, entry.region == self.region) {
                (_, false) => TrafficClass::CrossRegion,
                (Some(zone), true) if *zone == self.zone => TrafficClass::SameZone,
                (Some(_), true) => TrafficClass::CrossZone,
                (None, true) => TrafficClass::Unplaced,
            };
        }
        if self.vpc.iter().any(|c| c.contains(addr)) {
            return TrafficClass::Unplaced;
        }
        TrafficClass::Internet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> StaticTopology {
        let entry = |zone: Option<&str>, region: &str| ZoneEntry {
            zone: zone.map(str::to_owned),
            region: region.to_owned(),
        };
        StaticTopology::new(
            "us-east-1".into(),
            "us-east-1a".into(),
            vec!["10.0.0.0/16".parse().unwrap()],
            vec![
                (
                    "10.0.0.0/20".parse().unwrap(),
                    entry(Some("us-east-1a"), "us-east-1"),
                ),
                (
                    "10.0.16.0/20".parse().unwrap(),
                    entry(Some("us-east-1b"), "us-east-1"),
                ),
                // A more specific prefix inside the 1a subnet wins.
                (
                    "10.0.0.128/25".parse().unwrap(),
                    entry(Some("us-east-1c"), "us-east-1"),
                ),
                ("10.1.0.0/16".parse().unwrap(), entry(None, "eu-west-1")),
                ("10.2.0.0/16".parse().unwrap(), entry(None, "us-east-1")),
                (
                    "2600:1f18:1::/56".parse().unwrap(),
                    entry(Some("us-east-1b"), "us-east-1"),
                ),
            ],
        )
    }

    fn class(addr: &str) -> TrafficClass {
        topo().classify(addr.parse().unwrap())
    }

    #[test]
    fn classifies_by_longest_prefix() {
        assert_eq!(class("10.0.1.1"), TrafficClass::SameZone);
        assert_eq!(class("10.0.0.200"), TrafficClass::CrossZone);
        assert_eq!(class("10.0.17.1"), TrafficClass::CrossZone);
        assert_eq!(class("10.1.0.9"), TrafficClass::CrossRegion);
        assert_eq!(class("2600:1f18:1::5"), TrafficClass::CrossZone);
        assert_eq!(class("::ffff:10.0.1.1"), TrafficClass::SameZone);
    }

    #[test]
    fn unknown_private_addresses_are_unplaced_not_internet() {
        assert_eq!(class("10.2.3.4"), TrafficClass::Unplaced);
        assert_eq!(class("10.0.200.1"), TrafficClass::Unplaced);
        assert_eq!(class("192.168.5.5"), TrafficClass::Unplaced);
        assert_eq!(class("fd12::1"), TrafficClass::Unplaced);
        assert_eq!(class("203.0.113.9"), TrafficClass::Internet);
        assert_eq!(class("2001:db8::1"), TrafficClass::Internet);
    }

    #[test]
    fn node_local_addresses_are_same_zone() {
        for a in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"] {
            assert_eq!(class(a), TrafficClass::SameZone, "{a}");
        }
    }

    #[test]
    fn cidr_parsing_rejects_bad_input() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        let host: Cidr = "10.9.9.9".parse().unwrap();
        assert!(host.contains("10.9.9.9".parse().unwrap()));
        assert!(!host.contains("10.9.9.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
    }
}
