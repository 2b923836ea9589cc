use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::{fixtures::*, *};
use crate::vocab::Place;

fn meta(p: &Pod) -> PodMeta {
    let owner = controller_of(p);
    pod_meta(p, direct_workload(p, owner.as_ref())).unwrap()
}

#[test]
fn pods_map_to_workloads_and_containers() {
    let p = pod(
        "u1",
        "cart-7d9f8c-x2x",
        Some(("ReplicaSet", "cart-7d9f8c")),
        Some("10.0.1.5"),
    );
    let m = meta(&p);
    assert_eq!(m.workload.kind, "Deployment");
    assert_eq!(m.workload.name, "cart");
    assert_eq!(m.container_name("abc123"), Some("web"));
    assert_eq!(m.ips, vec!["10.0.1.5".parse::<IpAddr>().unwrap()]);
    // A ReplicaSet whose name does not carry the pod's hash stays a ReplicaSet.
    let p = pod("u2", "x", Some(("ReplicaSet", "handmade")), None);
    assert_eq!(meta(&p).workload.kind, "ReplicaSet");
    let p = pod("u3", "db-0", Some(("StatefulSet", "db")), None);
    assert_eq!(
        meta(&p).workload,
        Workload {
            kind: "StatefulSet".into(),
            name: "db".into()
        }
    );
    let p = pod("u4", "bare", None, None);
    assert_eq!(
        meta(&p).workload,
        Workload {
            kind: "Pod".into(),
            name: "bare".into()
        }
    );
}

#[test]
fn host_network_pods_never_claim_the_node_ip() {
    let mut p = pod(
        "u1",
        "agent",
        Some(("DaemonSet", "agent")),
        Some("10.0.0.1"),
    );
    p.spec.as_mut().unwrap().host_network = Some(true);
    let m = meta(&p);
    assert!(m.host_network);
    assert!(m.ips.is_empty());
}

#[test]
fn reused_pod_ip_points_at_the_pod_that_has_it_now() {
    let mut inv = Inventory::default();
    inv.pods_init();
    inv.pod_apply(meta(&pod("old", "a", None, Some("10.0.1.9"))));
    inv.pods_init_done();
    assert_eq!(
        inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
        "old"
    );
    // The old pod finished; a new pod gets the same IP.
    let mut old = meta(&pod("old", "a", None, Some("10.0.1.9")));
    old.finished = true;
    inv.pod_apply(old);
    assert!(inv.pod_by_ip("10.0.1.9".parse().unwrap()).is_none());
    inv.pod_apply(meta(&pod("new", "b", None, Some("10.0.1.9"))));
    assert_eq!(
        inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
        "new"
    );
    // Deleting the old pod afterwards does not unmap the new one.
    inv.pod_delete("old");
    assert_eq!(
        inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
        "new"
    );
    assert!(inv.pod("old").is_none());
}

#[test]
fn relist_replaces_the_set_atomically() {
    let mut inv = Inventory::default();
    assert!(!inv.pods_synced());
    inv.pods_init();
    inv.pod_apply(meta(&pod("a", "a", None, Some("10.0.1.1"))));
    inv.pod_apply(meta(&pod("b", "b", None, Some("10.0.1.2"))));
    // Not visible until the list is complete.
    assert!(inv.pod("a").is_none());
    inv.pods_init_done();
    assert!(inv.pods_synced());
    assert_eq!(inv.pod_count(), 2);
    // A relist (after 410 Gone) that no longer has b: b and its IP disappear at InitDone.
    inv.pods_init();
    inv.pod_apply(meta(&pod("a", "a", None, Some("10.0.1.1"))));
    assert!(inv.pod("b").is_some());
    inv.pods_init_done();
    assert!(inv.pod("b").is_none());
    assert!(inv.pod_by_ip("10.0.1.2".parse().unwrap()).is_none());
    assert!(inv.pod_by_ip("10.0.1.1".parse().unwrap()).is_some());
}

#[test]
fn aws_zone_names_give_their_region() {
    for (zone, region) in [
        ("us-east-1a", Some("us-east-1")),
        ("eu-central-2c", Some("eu-central-2")),
        ("us-gov-west-1b", Some("us-gov-west-1")),
        ("us-east-1-bos-1a", Some("us-east-1")),
        ("us-east-1-wl1-bos-wlz-1", Some("us-east-1")),
        ("zone-a", None),
        ("", None),
        ("us-east-1ab", None),
        ("US-EAST-1a", None),
    ] {
        assert_eq!(region_of_zone(zone), region, "{zone}");
    }
}

#[test]
fn malformed_node_fields_are_named() {
    let mut n = node("bad", "z", "id", "not-an-ip", "10.0.0.0/99");
    n.metadata.labels = None;
    let (m, problems) = node_meta(&n);
    assert_eq!(m.place, Place::default());
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("status.addresses"));
    assert!(problems[1].contains("spec.podCIDRs"));
}
