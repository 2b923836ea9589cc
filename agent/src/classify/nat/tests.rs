use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    conntrack::{Connection, Event},
    table::LEARNED_IDLE,
    *,
};
use crate::vocab::Cidr;
use agent_common::FlowKey;
use agent_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4};

use crate::classify::nat::conntrack::test_tuple as t;

/// pod 10.0.1.2:sport → ClusterIP 172.20.0.10:80, DNATed to a backend.
fn to_service(sport: u16, backend: &str) -> Connection {
    Connection {
        original: t("10.0.1.2", sport, "172.20.0.10", 80),
        reply: t(backend, 8080, "10.0.1.2", sport),
    }
}

fn v4(a: &str) -> [u32; 4] {
    let o = a.parse::<std::net::Ipv4Addr>().unwrap().octets();
    [u32::from_ne_bytes(o), 0, 0, 0]
}

/// The flow key the pod's socket produces for packets of that connection.
fn key(local: &str, lport: u16, remote: &str, rport: u16, direction: u8) -> FlowKey {
    let mut k = FlowKey::new(7, v4(remote), FAMILY_IPV4, direction);
    k.local = v4(local);
    k.local_port = lport.to_be();
    k.remote_port = rport.to_be();
    k.protocol = 6;
    k
}

fn table() -> NatTable {
    NatTable::new(
        vec!["172.20.0.0/16".parse().unwrap()],
        1_000_000,
        Duration::from_secs(30),
    )
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

#[test]
fn service_connections_resolve_to_the_chosen_backend_both_ways() {
    let mut nat = table();
    let now = Instant::now();
    nat.apply(&Event::New(to_service(40_000, "10.0.16.10")), now);
    nat.apply(&Event::New(to_service(40_001, "10.0.2.10")), now);
    let out = key("10.0.1.2", 40_000, "172.20.0.10", 80, DIRECTION_EGRESS);
    let back = key("10.0.1.2", 40_000, "172.20.0.10", 80, DIRECTION_INGRESS);
    let want = Resolution::Translated {
        remote: ip("10.0.16.10"),
        outbound: true,
    };
    assert_eq!(nat.resolve(&out), want);
    assert_eq!(nat.resolve(&back), want);
    assert_eq!(
        nat.resolve(&key("10.0.1.2", 40_001, "172.20.0.10", 80, 0)),
        Resolution::Translated {
            remote: ip("10.0.2.10"),
            outbound: true
        }
    );
    // A Service address without a known connection, and a plain address.
    assert_eq!(
        nat.resolve(&key("10.0.1.2", 40_002, "172.20.0.10", 80, 0)),
        Resolution::Unresolved
    );
    assert_eq!(
        nat.resolve(&key("10.0.1.2", 40_003, "10.0.2.10", 80, 0)),
        Resolution::Direct
    );
}

#[test]
fn nodeport_with_snat_resolves_to_the_outside_client_for_the_local_backend() {
    let mut nat = table();
    let now = Instant::now();
    nat.add_node_addresses([ip("10.0.0.1"), ip("10.0.1.1")], now);
    // 203.0.113.10:5555 → node 10.0.0.1:30080, DNAT to pod 10.0.1.2:5001, SNAT to 10.0.1.1.
    let c = Connection {
        original: t("203.0.113.10", 5555, "10.0.0.1", 30080),
        reply: t("10.0.1.2", 5001, "10.0.1.1", 61_000),
    };
    nat.apply(&Event::New(c), now);
    // The pod's socket sees 10.0.1.1:61000 as its peer.
    assert_eq!(
        nat.resolve(&key(
            "10.0.1.2",
            5001,
            "10.0.1.1",
            61_000,
            DIRECTION_INGRESS
        )),
        Resolution::Translated {
            remote: ip("203.0.113.10"),
            outbound: false
        }
    );
    // Node addresses go to the kernel once, and are never a Service address.
    let changes = nat.take_changes();
    assert!(changes.add.contains(&Cidr::host(ip("10.0.1.1"))));
    assert!(changes.add.contains(&Cidr::host(ip("10.0.0.1"))));
    assert_eq!(
        nat.resolve(&key("10.0.1.2", 5001, "10.0.1.1", 9, 0)),
        Resolution::Direct
    );
}

#[test]
fn closed_connections_stay_resolvable_for_the_retention_then_go() {
    let mut nat = table();
    let t0 = Instant::now();
    let c = to_service(40_000, "10.0.16.10");
    nat.apply(&Event::New(c), t0);
    nat.apply(&Event::Destroy(c), t0 + Duration::from_secs(1));
    nat.purge(t0 + Duration::from_secs(30));
    let k = key("10.0.1.2", 40_000, "172.20.0.10", 80, 0);
    assert!(matches!(nat.resolve(&k), Resolution::Translated { .. }));
    nat.purge(t0 + Duration::from_secs(32));
    assert_eq!(nat.resolve(&k), Resolution::Unresolved);
    assert!(nat.is_empty());
}

#[test]
fn a_destroy_without_its_new_still_resolves_and_a_dump_catches_missed_destroys() {
    let mut nat = table();
    let t0 = Instant::now();
    nat.apply(&Event::Destroy(to_service(1, "10.0.16.10")), t0);
    assert!(matches!(
        nat.resolve(&key("10.0.1.2", 1, "172.20.0.10", 80, 0)),
        Resolution::Translated { .. }
    ));
    nat.apply(&Event::New(to_service(2, "10.0.2.10")), t0);
    nat.apply(&Event::New(to_service(3, "10.0.2.10")), t0);
    // A dump lists only connection 3: 2 was destroyed while events were lost.
    nat.begin_dump();
    nat.apply(&Event::New(to_service(3, "10.0.2.10")), t0);
    nat.end_dump(t0);
    nat.purge(t0 + Duration::from_secs(31));
    assert_eq!(nat.len(), 2, "only connection 3 is left");
    assert!(matches!(
        nat.resolve(&key("10.0.1.2", 3, "172.20.0.10", 80, 0)),
        Resolution::Translated { .. }
    ));
}

#[test]
fn churn_leaves_nothing_behind_and_capacity_is_counted() {
    let mut nat = NatTable::new(vec![], 2_000, Duration::from_secs(1));
    let t0 = Instant::now();
    for round in 0..20u16 {
        for i in 0..500u16 {
            let c = Connection {
                original: t("10.0.1.2", i, &format!("172.20.{}.{}", round, i % 200), 80),
                reply: t("10.0.16.10", 8080, "10.0.1.2", i),
            };
            nat.apply(&Event::New(c), t0);
            nat.apply(&Event::Destroy(c), t0);
        }
        nat.purge(t0 + Duration::from_secs(2));
    }
    assert_eq!(nat.len(), 0);
    assert_eq!(nat.stats.full, 0);
    // Learned Service addresses go once idle long enough.
    let learned = nat.learned_addresses();
    assert!(learned > 0);
    nat.purge(t0 + LEARNED_IDLE + Duration::from_secs(5));
    assert_eq!(nat.learned_addresses(), 0);
    let changes = nat.take_changes();
    assert_eq!(changes.add.len(), changes.remove.len());
    // Capacity: 1,000 connections fit, the next is counted.
    for i in 0..1_001u16 {
        nat.apply(&Event::New(to_service(i, "10.0.16.10")), t0);
    }
    assert_eq!((nat.len(), nat.stats.full), (2_000, 1));
}
