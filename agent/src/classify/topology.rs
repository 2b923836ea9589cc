//! Where a remote address is: same zone, another zone, another region, the internet — or a place
//! we cannot tell, which is reported as such rather than guessed.
//!
//! The table is built in tiers (`PlaceSource`): the config's, AWS's and the cluster's (see
//! `layers`), behind one trait.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    config::TopologyConfig,
    vocab::{classify_place, Cidr, Place, PrefixTable, TrafficClass},
};

pub trait Topology: Send + Sync {
    fn classify(&self, addr: IpAddr) -> TrafficClass;
}

/// Who placed a prefix. Sources are grouped in tiers of authority: what the operator wrote
/// (config), what AWS says of its own subnets (instance metadata, EC2), and what the cluster
/// says of its members (Nodes, this node's pods, EndpointSlices). The first tier that places an
/// address decides (longest prefix within the tier): a subnet is single-zone by AWS's rules, so
/// it outranks anything the cluster derives, and the operator outranks both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlaceSource {
    Config,
    InstanceMetadata,
    Ec2,
    Nodes,
    Pods,
    EndpointSlices,
}

impl PlaceSource {
    pub const ALL: [PlaceSource; 6] = [
        PlaceSource::Config,
        PlaceSource::InstanceMetadata,
        PlaceSource::Ec2,
        PlaceSource::Nodes,
        PlaceSource::Pods,
        PlaceSource::EndpointSlices,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlaceSource::Config => "config",
            PlaceSource::InstanceMetadata => "instance_metadata",
            PlaceSource::Ec2 => "ec2",
            PlaceSource::Nodes => "nodes",
            PlaceSource::Pods => "pods",
            PlaceSource::EndpointSlices => "endpointslices",
        }
    }

    /// The tier a source belongs to (its index in `StaticTopology::tiers`).
    pub fn tier(self) -> Tier {
        match self {
            PlaceSource::Config => Tier::Config,
            PlaceSource::InstanceMetadata | PlaceSource::Ec2 => Tier::Aws,
            PlaceSource::Nodes | PlaceSource::Pods | PlaceSource::EndpointSlices => Tier::Cluster,
        }
    }
}

/// Tiers of authority, highest first (see `PlaceSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Config = 0,
    Aws = 1,
    Cluster = 2,
}

/// The prefixes of one tier, with how many each source put there. Places are shared (`Arc`):
/// thousands of prefixes point at a handful of zones.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    table: PrefixTable<Arc<Place>>,
    counts: HashMap<PlaceSource, usize>,
    interned: HashMap<Place, Arc<Place>>,
}

impl Layer {
    /// Adds a prefix; for an equal prefix the first added wins.
    pub fn add(&mut self, source: PlaceSource, cidr: Cidr, place: &Place) {
        let place = match self.interned.get(place) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(place.clone());
                self.interned.insert(place.clone(), p.clone());
                p
            }
        };
        self.table.insert(cidr, place);
        *self.counts.entry(source).or_default() += 1;
    }

    /// A single address (an IPv4 /32 or IPv6 /128).
    pub fn add_host(&mut self, source: PlaceSource, addr: IpAddr, place: &Place) {
        self.add(source, Cidr::host(addr), place);
    }

    pub fn count(&self, source: PlaceSource) -> usize {
        self.counts.get(&source).copied().unwrap_or(0)
    }
}

/// A table of prefixes → places in tiers (see `PlaceSource`), our own place, and the ranges that
/// are never the internet (the private ranges, and the VPC's own, which may be public IPv4 or
/// IPv6 GUA). Built from the config file, then rebuilt tier by tier when instance metadata, EC2
/// or the Kubernetes inventory change.
///
/// Lookups go by prefix length, longest first, one hash probe per distinct length: a cluster of
/// thousands of nodes gives tens of thousands of prefixes but only a handful of lengths.
#[derive(Clone, Debug)]
pub struct StaticTopology {
    own: Place,
    vpc: Vec<Cidr>,
    tiers: [Arc<Layer>; 3],
    /// Public addresses of our own region (nodes' ExternalIPs): `RegionalPublic`.
    regional_public: Arc<std::collections::HashSet<IpAddr>>,
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
    /// The config's tier (`topology:`).
    pub fn from_config(config: &TopologyConfig) -> StaticTopology {
        StaticTopology::new(
            config.own.clone(),
            config.vpc.clone(),
            config.entries.clone(),
        )
    }

    /// The config's topology: our place as far as the config says it, the VPC ranges it lists
    /// and its prefixes.
    pub fn new(own: Place, mut vpc: Vec<Cidr>, entries: Vec<(Cidr, Place)>) -> StaticTopology {
        vpc.extend(PRIVATE.iter().filter_map(|c| c.parse::<Cidr>().ok()));
        let mut config = Layer::default();
        for (cidr, place) in &entries {
            config.add(PlaceSource::Config, *cidr, place);
        }
        StaticTopology {
            own,
            vpc,
            tiers: [Arc::new(config), Arc::default(), Arc::default()],
            regional_public: Default::default(),
        }
    }

    pub fn own(&self) -> &Place {
        &self.own
    }

    /// Whether `addr` is in the VPC's ranges or a private range (never the internet).
    pub fn is_private(&self, addr: IpAddr) -> bool {
        self.vpc.iter().any(|c| c.contains(addr))
    }

    /// A copy with another own place.
    pub fn with_own(&self, own: Place) -> Self {
        StaticTopology {
            own,
            ..self.clone()
        }
    }

    /// A copy whose tier `tier` is `layer` (the config tier is the config's own).
    pub fn with_layer(mut self, tier: Tier, layer: Arc<Layer>) -> Self {
        self.tiers[tier as usize] = layer;
        self
    }

    /// A copy with more never-internet ranges (the VPC's own, from instance metadata).
    pub fn with_vpc(mut self, ranges: impl IntoIterator<Item = Cidr>) -> Self {
        for c in ranges {
            if !self.vpc.contains(&c) {
                self.vpc.push(c);
            }
        }
        self
    }

    /// A copy with another own place and more cluster entries (the config's entries outrank
    /// them, see `PlaceSource`).
    pub fn extended(&self, own: Place, extra: impl IntoIterator<Item = (Cidr, Place)>) -> Self {
        let mut layer = (*self.tiers[Tier::Cluster as usize]).clone();
        for (cidr, place) in extra {
            layer.add(PlaceSource::Nodes, cidr, &place);
        }
        self.with_own(own)
            .with_layer(Tier::Cluster, Arc::new(layer))
    }

    /// Marks public addresses (nodes' ExternalIPs) of `region`; those of our own region become
    /// `RegionalPublic`, the others keep their place (another region: cross-region).
    pub fn with_public(
        mut self,
        addrs: impl IntoIterator<Item = (IpAddr, Option<String>)>,
    ) -> Self {
        let mut set = (*self.regional_public).clone();
        for (addr, region) in addrs {
            if region.is_some() && region == self.own.region {
                set.insert(addr);
            }
        }
        self.regional_public = Arc::new(set);
        self
    }

    /// Prefixes placed by each source.
    pub fn prefix_counts(&self) -> impl Iterator<Item = (PlaceSource, usize)> + '_ {
        PlaceSource::ALL
            .into_iter()
            .map(|s| (s, self.tiers[s.tier() as usize].count(s)))
    }

    /// The place of the first tier that places `addr` (longest prefix within it).
    pub fn lookup(&self, addr: IpAddr) -> Option<&Place> {
        self.tiers
            .iter()
            .find_map(|t| t.table.lookup(addr))
            .map(|p| &**p)
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
        if self.regional_public.contains(&addr) {
            return TrafficClass::RegionalPublic;
        }
        if let Some(place) = self.lookup(addr) {
            return classify_place(&self.own, place);
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
        let entry = |zone: Option<&str>, region: &str| match zone {
            Some(z) => Place::zone(z, region),
            None => Place::region(region),
        };
        StaticTopology::new(
            Place::zone("us-east-1a", "us-east-1"),
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
    fn zone_ids_decide_over_zone_names() {
        let own = Place {
            zone: Some("us-east-1a".into()),
            zone_id: Some("use1-az1".into()),
            region: Some("us-east-1".into()),
        };
        // Another account's "us-east-1b" is our us-east-1a: same zone ID.
        let remote = Place {
            zone: Some("us-east-1b".into()),
            zone_id: Some("use1-az1".into()),
            region: Some("us-east-1".into()),
        };
        assert_eq!(classify_place(&own, &remote), TrafficClass::SameZone);
        let remote = Place {
            zone_id: Some("use1-az2".into()),
            ..remote
        };
        assert_eq!(classify_place(&own, &remote), TrafficClass::CrossZone);
        // Without a zone ID on one side, names decide.
        assert_eq!(
            classify_place(&own, &Place::zone("us-east-1a", "us-east-1")),
            TrafficClass::SameZone
        );
        // Unknown own zone: nothing but the region can be told.
        let nowhere = Place::region("us-east-1");
        assert_eq!(
            classify_place(&nowhere, &Place::zone("us-east-1a", "us-east-1")),
            TrafficClass::Unplaced
        );
        assert_eq!(
            classify_place(&nowhere, &Place::zone("eu-west-1a", "eu-west-1")),
            TrafficClass::CrossRegion
        );
        assert_eq!(
            classify_place(&Place::default(), &Place::zone("eu-west-1a", "eu-west-1")),
            TrafficClass::Unplaced
        );
    }

    #[test]
    fn extended_tables_keep_config_entries_first() {
        let t = topo().extended(
            Place::zone("us-east-1b", "us-east-1"),
            [(
                "10.0.0.0/20".parse().unwrap(),
                Place::zone("us-east-1b", "us-east-1"),
            )],
        );
        // The config says 10.0.0.0/20 is us-east-1a; we are now in 1b.
        assert_eq!(
            t.classify("10.0.1.1".parse().unwrap()),
            TrafficClass::CrossZone
        );
        assert_eq!(
            t.classify("10.0.17.1".parse().unwrap()),
            TrafficClass::SameZone
        );
    }

    #[test]
    fn a_higher_tier_decides_whatever_a_lower_one_says() {
        // The cluster says 10.0.16.5 is in our zone (e.g. a stale endpoint); the config says
        // its subnet is us-east-1b; AWS says 10.0.32.0/20 is us-east-1c.
        let mut cluster = Layer::default();
        for a in ["10.0.16.5", "10.0.32.7", "10.0.99.1"] {
            cluster.add_host(
                PlaceSource::EndpointSlices,
                a.parse().unwrap(),
                &Place::zone("us-east-1a", "us-east-1"),
            );
        }
        let mut aws = Layer::default();
        aws.add(
            PlaceSource::Ec2,
            "10.0.32.0/20".parse().unwrap(),
            &Place::zone("us-east-1c", "us-east-1"),
        );
        aws.add(
            PlaceSource::Ec2,
            "10.0.16.0/20".parse().unwrap(),
            &Place::zone("us-east-1a", "us-east-1"),
        );
        let t = topo()
            .with_layer(Tier::Cluster, Arc::new(cluster))
            .with_layer(Tier::Aws, Arc::new(aws));
        let class = |a: &str| t.classify(a.parse().unwrap());
        assert_eq!(
            class("10.0.16.5"),
            TrafficClass::CrossZone,
            "config outranks AWS and the cluster"
        );
        assert_eq!(
            class("10.0.32.7"),
            TrafficClass::CrossZone,
            "AWS outranks the cluster"
        );
        assert_eq!(
            class("10.0.99.1"),
            TrafficClass::SameZone,
            "the cluster places what no one else does"
        );
        let counts: HashMap<_, _> = t.prefix_counts().collect();
        assert_eq!(counts[&PlaceSource::Config], 6);
        assert_eq!(counts[&PlaceSource::Ec2], 2);
        assert_eq!(counts[&PlaceSource::EndpointSlices], 3);
        // A VPC range that is not private (an IPv6 GUA block) is never internet.
        let v6 = "2600:1f18:aaaa::/56".parse().unwrap();
        assert_eq!(
            t.classify("2600:1f18:aaaa::9".parse().unwrap()),
            TrafficClass::Internet
        );
        let t = t.with_vpc([v6]);
        assert_eq!(
            t.classify("2600:1f18:aaaa::9".parse().unwrap()),
            TrafficClass::Unplaced
        );
    }
}
