use std::collections::HashMap;

use super::*;
use crate::{
    classify::topology::Topology,
    inventory::{aws, fixtures::*, node_meta, slice_meta, Interner},
    vocab::TrafficClass,
};
use k8s_openapi::api::core::v1::NodeAddress;

#[test]
fn nodes_place_addresses_and_pod_cidrs_by_zone_id() {
    let mut inv = Inventory::default();
    inv.nodes_init();
    // A node of our own zone with a public IP: reaching it there costs like cross-zone.
    let mut twin = node("twin", "us-east-1c", "use1-az1", "10.0.0.9", "10.0.9.0/24");
    if let Some(a) = twin.status.as_mut().and_then(|s| s.addresses.as_mut()) {
        a.push(NodeAddress {
            type_: "ExternalIP".into(),
            address: "198.51.100.9".into(),
        });
    }
    for n in [
        node("me", "us-east-1a", "use1-az1", "10.0.0.1", "10.0.1.0/24"),
        // Named "us-east-1c" but the same physical zone as ours.
        twin,
        node("far", "us-east-1b", "use1-az2", "10.0.16.1", "10.0.17.0/24"),
    ] {
        let (m, problems) = node_meta(&n);
        assert!(problems.is_empty());
        inv.node_apply(m);
    }
    inv.nodes_init_done();
    let base = StaticTopology::new(Place::default(), vec![], vec![]);
    let t = cluster_topology(&inv, &base, Some("me"), &Place::default());
    let class = |a: &str| t.classify(a.parse().unwrap());
    assert_eq!(class("10.0.0.9"), TrafficClass::SameZone);
    assert_eq!(class("10.0.9.77"), TrafficClass::SameZone);
    assert_eq!(class("10.0.16.1"), TrafficClass::CrossZone);
    assert_eq!(class("10.0.17.3"), TrafficClass::CrossZone);
    assert_eq!(class("10.0.200.1"), TrafficClass::Unplaced);
    assert_eq!(class("198.51.100.9"), TrafficClass::RegionalPublic);
    // Without our own Node, nothing private can be placed (and nothing is guessed).
    let t = cluster_topology(&inv, &base, Some("unknown-node"), &Place::default());
    assert_eq!(
        t.classify("10.0.16.1".parse().unwrap()),
        TrafficClass::Unplaced
    );
}

#[test]
fn endpointslices_place_service_backends_by_their_node_else_their_zone() {
    let mut inv = Inventory::default();
    inv.nodes_init();
    for n in [
        node("me", "us-east-1a", "use1-az1", "10.0.0.1", "10.0.1.0/24"),
        // Another account's name for our zone.
        node("twin", "us-east-1c", "use1-az1", "10.0.0.9", "10.0.9.0/24"),
    ] {
        inv.node_apply(node_meta(&n).0);
    }
    inv.nodes_init_done();
    let mut names = Interner::default();
    let s = slice(
        "api-x1",
        Some("api"),
        vec![
            // On a known node: its zone ID decides (same zone despite the name).
            (
                &["10.0.40.5"],
                Some("twin"),
                Some("us-east-1c"),
                Some("api-1"),
            ),
            // Node unknown: the zone name, in the region it names.
            (
                &["10.0.50.6"],
                Some("gone"),
                Some("us-east-1b"),
                Some("api-2"),
            ),
            // Neither: nothing to place it with.
            (&["10.0.60.7"], None, None, None),
            (&["not-an-ip"], None, None, None),
        ],
    );
    let (meta, problems) = slice_meta(&s, &mut names);
    let meta = meta.unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(meta.service.as_deref(), Some("api"));
    assert_eq!(meta.endpoints[0].pod.as_deref(), Some("api-1"));
    inv.slices_init();
    inv.slice_apply(meta);
    inv.slices_init_done();
    assert_eq!(inv.endpoint_count(), 3);
    let base = StaticTopology::new(Place::default(), vec![], vec![]);
    let t = cluster_topology(&inv, &base, Some("me"), &Place::default());
    let class = |a: &str| t.classify(a.parse().unwrap());
    assert_eq!(class("10.0.40.5"), TrafficClass::SameZone);
    assert_eq!(class("10.0.50.6"), TrafficClass::CrossZone);
    assert_eq!(class("10.0.60.7"), TrafficClass::Unplaced);
    let counts: HashMap<_, _> = t.prefix_counts().collect();
    assert_eq!(counts[&PlaceSource::EndpointSlices], 2);
    assert_eq!(counts[&PlaceSource::Nodes], 4);
    // The slice goes away: so do its places.
    inv.slice_delete("shop/api-x1");
    let t = cluster_topology(&inv, &base, Some("me"), &Place::default());
    assert_eq!(
        t.classify("10.0.50.6".parse().unwrap()),
        TrafficClass::Unplaced
    );
    // FQDN slices place nothing.
    let mut fqdn = slice(
        "ext",
        Some("ext"),
        vec![(&["db.example"], None, None, None)],
    );
    fqdn.address_type = "FQDN".into();
    assert!(slice_meta(&fqdn, &mut names).0.is_none());
}

#[test]
fn the_aws_tier_places_our_subnets_at_our_place_and_every_subnet_at_its_zone() {
    let mut own = Place::zone("us-east-1a", "us-east-1");
    own.zone_id = Some("use1-az1".into());
    let facts = CloudFacts {
        place: own.clone(),
        network: aws::imds::Network {
            vpc_id: Some("vpc-1".into()),
            subnets: vec!["10.0.0.0/20".parse().unwrap()],
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        },
        subnets: aws::subnet_places(
            &[aws::xml::Subnet {
                id: "subnet-b".into(),
                zone: Some("us-east-1b".into()),
                zone_id: Some("use1-az2".into()),
                ipv4: Some("10.0.16.0/20".parse().unwrap()),
                ipv6: vec!["2600:1f18::/64".parse().unwrap()],
            }],
            Some("us-east-1".into()),
        ),
        ..Default::default()
    };
    let layer = aws_layer(&facts);
    assert_eq!(layer.count(PlaceSource::InstanceMetadata), 1);
    assert_eq!(layer.count(PlaceSource::Ec2), 2);
}
