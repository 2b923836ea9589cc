//! The grouped path gives exactly the totals of the entry-by-entry path.

use super::*;
use agent_common::DIRECTION_INGRESS;

/// One drain's worth of mixed entries: the named pod to several classes in both directions
/// (several entries per series), a cgroup nobody knows, and an address waiting for the topology
/// is not part of it (this fixture's topology is static and ready).
fn mixed(f: &mut Fixture) {
    let remotes: [[u8; 4]; 6] = [
        [10, 0, 16, 7],
        [10, 0, 17, 8],
        [10, 0, 18, 9],
        [8, 8, 8, 8],
        [1, 1, 1, 1],
        [192, 168, 5, 5],
    ];
    for (i, remote) in remotes.iter().enumerate() {
        for (cgroup, direction) in [
            (f.cgroup_id, DIRECTION_EGRESS),
            (f.cgroup_id, DIRECTION_INGRESS),
            (987_654_321, DIRECTION_EGRESS),
        ] {
            let key = FlowKey::new(
                cgroup,
                [u32::from_ne_bytes(*remote), 0, 0, 0],
                FAMILY_IPV4,
                direction,
            );
            let mut c = Counter::default();
            c.add(1000 + 37 * i as u64, 1 + i as u64);
            f.pipeline.drainer.buffers_mut().flows.push((key, c));
        }
    }
}

#[test]
fn grouped_drain_totals_equal_the_entry_by_entry_ones() {
    let mut grouped = fixture("grouped-a", Duration::from_secs(300));
    let mut single = fixture("grouped-b", Duration::from_secs(300));
    single.pipeline.per_entry = true;
    for f in [&mut grouped, &mut single] {
        list_pods(f, vec![cart()]);
        mixed(f);
        f.pipeline.tick().unwrap();
        mixed(f);
        f.pipeline.tick().unwrap();
    }
    let (a, b) = (
        counter_lines(&exposition(&grouped)),
        counter_lines(&exposition(&single)),
    );
    // Not a comparison of two empty expositions: the pod's bytes are there.
    assert!(
        a.iter()
            .any(|l| l.starts_with("netcost_network_bytes_total") && l.contains("cart-1")),
        "{a:#?}"
    );
    // Same series; the same bytes and packets; dollars summed in another order may differ in
    // the last bits of an f64, nothing more.
    let split = |l: &String| -> (String, f64) {
        let (series, value) = l.rsplit_once(' ').unwrap();
        (series.to_owned(), value.parse().unwrap())
    };
    let (a, b): (Vec<_>, Vec<_>) = (a.iter().map(split).collect(), b.iter().map(split).collect());
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((series, x), (_, y)) in a.iter().zip(&b) {
        if series.contains("_dollars_") {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{series}: {x} vs {y}"
            );
        } else {
            assert_eq!(x, y, "{series}");
        }
    }
}
