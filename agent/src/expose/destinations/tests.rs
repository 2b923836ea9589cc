use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use super::*;
use crate::{
    expose::{encode, Format},
    vocab::{Destination, TrafficClass},
};

fn config(top: usize, max_series: usize) -> DestinationsConfig {
    DestinationsConfig {
        enabled: true,
        top,
        max_series,
        half_life: Duration::from_secs(600),
    }
}

fn pod(uid: &str) -> TrafficLabels {
    TrafficLabels {
        owner: Owner::Pod,
        pod: PodLabels::uid_only(uid),
        destination: Destination::from(TrafficClass::CrossZone),
        direction: Direction::Egress,
    }
}

fn addr(i: u32) -> Peer {
    Peer::address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), false, None)
}

fn setup(top: usize, max_series: usize) -> (Registries, DestinationMetrics) {
    let mut registries = Registries::default();
    let m = DestinationMetrics::register(&mut registries, &config(top, max_series));
    (registries, m)
}

/// (member series, bytes of every series, bytes of `other`) of one owner.
fn series_of(m: &DestinationMetrics, uid: &str) -> (usize, u64, u64) {
    let mine: Vec<_> = m
        .totals()
        .into_iter()
        .filter(|t| t.labels.pod.pod_uid == uid)
        .collect();
    let members = mine
        .iter()
        .filter(|t| t.labels.peer.kind != PeerKind::Other)
        .count();
    let all = mine.iter().map(|t| t.bytes).sum();
    let other = mine
        .iter()
        .filter(|t| t.labels.peer.kind == PeerKind::Other)
        .map(|t| t.bytes)
        .sum();
    (members, all, other)
}

fn members(m: &DestinationMetrics, uid: &str) -> Vec<Peer> {
    let mut v: Vec<Peer> = m
        .totals()
        .into_iter()
        .filter(|t| t.labels.pod.pod_uid == uid && t.labels.peer.kind != PeerKind::Other)
        .map(|t| t.labels.peer)
        .collect();
    v.sort();
    v
}

#[test]
fn the_top_k_get_series_and_the_rest_sums_into_other() {
    let (_r, mut m) = setup(3, 100);
    let mut sent = 0;
    for i in 0..15u32 {
        let bytes = 1000 * u64::from(15 - i);
        m.add(&pod("a"), addr(i), bytes, Some(bytes as f64 * 1e-9));
        sent += bytes;
    }
    m.flush(Instant::now());
    let (n, all, other) = series_of(&m, "a");
    assert_eq!(n, 3);
    assert_eq!(all, sent, "every byte is in one series");
    assert_eq!(other, sent - 15_000 - 14_000 - 13_000);
    assert_eq!(members(&m, "a"), {
        let mut v = vec![addr(0), addr(1), addr(2)];
        v.sort();
        v
    });
}

#[test]
fn membership_does_not_flap_when_ranks_swap_a_little() {
    let (_r, mut m) = setup(2, 100);
    let t0 = Instant::now();
    // Four remote ends of nearly the same weight, whose order changes at every drain.
    for drain in 0..20u32 {
        for i in 0..4u32 {
            let bytes = 10_000 + u64::from((i + drain) % 4) * 500;
            m.add(&pod("a"), addr(i), bytes, None);
        }
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
        if drain == 0 {
            continue;
        }
        assert_eq!(members(&m, "a").len(), 2);
    }
    let first = members(&m, "a");
    for drain in 20..40u32 {
        for i in 0..4u32 {
            m.add(
                &pod("a"),
                addr(i),
                10_000 + u64::from((i + drain) % 4) * 500,
                None,
            );
        }
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
        assert_eq!(members(&m, "a"), first, "drain {drain}");
    }
    // A remote end that clearly outweighs them takes a place within a few drains.
    for drain in 40..50u32 {
        m.add(&pod("a"), addr(99), 200_000, None);
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
    }
    assert!(members(&m, "a").contains(&addr(99)));
}

#[test]
fn the_cap_bounds_series_counts_refusals_and_keeps_bytes() {
    let (r, mut m) = setup(3, 5);
    for owner in 0..4u32 {
        for i in 0..3u32 {
            m.add(&pod(&format!("p{owner}")), addr(i), 100, None);
        }
    }
    m.flush(Instant::now());
    let totals = m.totals();
    let members = totals
        .iter()
        .filter(|t| t.labels.peer.kind != PeerKind::Other)
        .count();
    assert_eq!(members, 5);
    assert_eq!(totals.iter().map(|t| t.bytes).sum::<u64>(), 1200);
    assert_eq!(m.refused.get(), 7);
    let text = encode(&r.live, Format::PrometheusText).unwrap();
    assert!(
        text.contains("netcost_destination_refused_total 7"),
        "{text}"
    );
    assert!(text.contains("netcost_destination_series 5"), "{text}");
}

#[test]
fn a_spray_of_100000_addresses_stays_within_the_tables() {
    let (r, mut m) = setup(10, 5000);
    let t0 = Instant::now();
    let mut sent = 0;
    for drain in 0..10u32 {
        for i in 0..10_000u32 {
            let n = drain * 10_000 + i;
            m.add(&pod("a"), addr(n), 64, None);
            sent += 64;
        }
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
    }
    let (n, all, _) = series_of(&m, "a");
    assert_eq!(n, 10, "the top ten of a uniform spray, and no more");
    assert_eq!(all, sent);
    let state = m.state();
    let board = state
        .boards
        .values()
        .flat_map(|p| p.values())
        .next()
        .unwrap();
    assert!(board.candidates.len() <= 10 * CANDIDATES_PER_MEMBER);
    drop(state);
    let text = encode(&r.durable, Format::PrometheusText).unwrap();
    let series = text
        .lines()
        .filter(|l| l.starts_with("netcost_destination_bytes_total{"))
        .count();
    assert!(series <= 11, "{series} series");
}

#[test]
fn a_removed_pod_loses_its_series() {
    let (r, mut m) = setup(3, 100);
    for i in 0..5 {
        m.add(&pod("a"), addr(i), 100, None);
        m.add(&pod("b"), addr(i), 100, None);
    }
    m.flush(Instant::now());
    m.remove_pod("a");
    assert_eq!(series_of(&m, "a"), (0, 0, 0));
    assert_eq!(series_of(&m, "b").1, 500);
    let text = encode(&r.durable, Format::PrometheusText).unwrap();
    assert!(!text.contains("pod_uid=\"a\""), "{text}");
    assert!(text.contains("pod_uid=\"b\""));
    assert_eq!(m.state().members, 3);
}

#[test]
fn totals_restore_to_the_same_series_and_ranking() {
    let (_r, mut m) = setup(2, 100);
    for i in 0..4u32 {
        m.add(&pod("a"), addr(i), 1000 * u64::from(4 - i), Some(0.5));
    }
    m.flush(Instant::now());
    let saved = m.totals();
    let (_r2, mut n) = setup(2, 100);
    n.restore(&saved);
    let mut a = saved.clone();
    let mut b = n.totals();
    let key = |t: &DestinationTotal| format!("{:?}", t.labels);
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
    // The successor goes on from there: the same members keep their places.
    n.add(&pod("a"), addr(2), 1000, None);
    n.flush(Instant::now());
    assert_eq!(members(&n, "a"), members(&m, "a"));
}

#[test]
fn off_registers_and_records_nothing() {
    let mut registries = Registries::default();
    let mut cfg = config(10, 100);
    cfg.enabled = false;
    let mut m = DestinationMetrics::register(&mut registries, &cfg);
    m.add(&pod("a"), addr(1), 100, None);
    m.flush(Instant::now());
    assert!(m.totals().is_empty());
    let text = encode(&registries.durable, Format::PrometheusText).unwrap();
    assert!(!text.contains("netcost_destination"), "{text}");
}

#[test]
fn a_spray_cannot_push_a_steady_talker_out_of_the_candidates() {
    let (_r, mut m) = setup(2, 100);
    let t0 = Instant::now();
    let steady = [addr(500_000), addr(500_001)];
    for drain in 0..30u32 {
        m.add(&pod("a"), addr(1), 100_000, None);
        m.add(&pod("a"), addr(2), 90_000, None);
        // Third and fourth: no place among the members, candidates all the same (the table
        // holds four), each adding more per drain than any one of the spray.
        m.add(&pod("a"), steady[0].clone(), 5_000, None);
        m.add(&pod("a"), steady[1].clone(), 4_000, None);
        for i in 0..100u32 {
            m.add(&pod("a"), addr(1000 + drain * 100 + i), 1_000, None);
        }
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
    }
    let state = m.state();
    let board = state
        .boards
        .values()
        .flat_map(|p| p.values())
        .next()
        .unwrap();
    for peer in steady {
        let key = (TrafficClass::CrossZone, peer);
        assert!(
            board.candidates.contains_key(&key),
            "a steady talker was pushed out"
        );
    }
    assert!(board.candidates.len() <= 2 * CANDIDATES_PER_MEMBER);
}
