use std::path::Path;

use super::*;
use crate::{
    attribute::{HeldBytes, Identity},
    expose::{
        Counters, DestinationLabels, DestinationTotal, KubecostLabels, KubecostTotal, Totals,
        TrafficTotal,
    },
    kernel::MapsOrigin,
    vocab::{Destination, Direction, Owner, Peer, PodLabels, Route, TrafficClass, TrafficLabels},
};

fn sample() -> Checkpoint {
    let pod = PodLabels {
        namespace: "shop".into(),
        pod: "cart-7d9f".into(),
        pod_uid: "0b8e-uid".into(),
        workload_kind: "Deployment".into(),
        workload: "cart".into(),
    };
    Checkpoint {
        format: FORMAT,
        abi: agent_common::ABI_VERSION,
        maps: Some(MapsIdentity {
            boot_id: "b00t".into(),
            maps_id: 42,
        }),
        drained_epoch: Some(u32::MAX),
        lost_seen: [[1, 2], [3, 4]],
        saved_unix_seconds: 1_700_000_000,
        totals: Totals {
            traffic: vec![TrafficTotal {
                labels: TrafficLabels {
                    owner: Owner::Pod,
                    pod: pod.clone(),
                    destination: Destination {
                        class: TrafficClass::SameRegion,
                        service: Some("aws-s3".into()),
                        route: Route::NatGateway { cross_zone: true },
                    },
                    direction: Direction::Egress,
                },
                bytes: u64::MAX - 1,
                packets: 3,
                // Dollars must come back bit for bit.
                dollars: 0.1 + 0.2,
            }],
            kubecost: vec![KubecostTotal {
                direction: Direction::Ingress,
                labels: KubecostLabels {
                    pod_name: "cart-7d9f".into(),
                    namespace: "shop".into(),
                    internet: false,
                    same_region: true,
                    same_zone: false,
                    service: String::new(),
                    nat_gateway: true,
                },
                bytes: 12,
            }],
            counters: Counters {
                unpriced_bytes: 9,
                ..Counters::default()
            },
        },
        held: vec![HeldBytes {
            identity: Identity::Pod {
                uid: "u".into(),
                container: None,
            },
            remote: Some("2001:db8::1".parse().unwrap()),
            outbound: false,
            direction: Direction::Ingress,
            bytes: 5,
            packets: 1,
            age_seconds: 1.5,
        }],
        pending_nat: vec![],
        destinations: vec![DestinationTotal {
            labels: DestinationLabels {
                owner: Owner::Pod,
                pod: pod.clone(),
                direction: Direction::Ingress,
                class: TrafficClass::Internet,
                peer: Peer {
                    port: 9100,
                    ..Peer::address("198.51.100.7".parse().unwrap(), true, None)
                },
            },
            bytes: 4096,
            dollars: 0.1 + 0.7,
            score: 1234.5,
        }],
    }
}

#[test]
fn a_checkpoint_round_trips_exactly() {
    let dir = std::env::temp_dir().join(format!("netcost-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = CheckpointStore::in_dir(&dir);
    assert_eq!(store.load().unwrap(), None);
    let cp = sample();
    store.save(&cp).unwrap();
    assert_eq!(store.load().unwrap(), Some(cp));
    assert!(store.remove().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_goes_on_only_with_the_maps_it_was_written_for() {
    let ours = MapsIdentity {
        boot_id: "b00t".into(),
        maps_id: 42,
    };
    // sample()'s drained epoch is u32::MAX: the kernel at epoch 1 has that buffer idle.
    let decide = |origin: &MapsOrigin, other: Option<&Path>, cp: Option<Checkpoint>| {
        StartTotals::decide(origin, other, cp, &ours, 1)
    };
    match decide(&MapsOrigin::Adopted, None, Some(sample())) {
        StartTotals::Restored { drain, .. } => {
            assert_eq!(drain.map(|d| d.drained_epoch), Some(u32::MAX));
            assert_eq!(drain.unwrap().lost_seen[1].packets, 4);
        }
        other => panic!("{other:?}"),
    }
    // Maps of another boot or instance: their drain state says nothing about ours.
    let mut foreign = sample();
    foreign.maps.as_mut().unwrap().maps_id = 7;
    assert!(matches!(
        decide(&MapsOrigin::Adopted, None, Some(foreign.clone())),
        StartTotals::Reset {
            incompatible: false,
            ..
        }
    ));
    // New maps (after a reboot): the totals go on, the drain starts afresh.
    assert!(matches!(
        decide(&MapsOrigin::Created, None, Some(foreign)),
        StartTotals::Restored { drain: None, .. }
    ));
    assert!(matches!(
        decide(&MapsOrigin::Created, None, None),
        StartTotals::New
    ));
    let reset = decide(
        &MapsOrigin::Created,
        Some(Path::new("/sys/fs/bpf/netcost/v2")),
        Some(sample()),
    );
    assert!(
        matches!(&reset, StartTotals::Reset { reason, incompatible: true } if reason.contains("v2")),
        "{reset:?}"
    );
    let mut old_abi = sample();
    old_abi.abi = 1;
    assert_eq!(
        decide(&MapsOrigin::Adopted, None, Some(old_abi)).label(),
        "reset"
    );
    assert_eq!(
        decide(&MapsOrigin::Replaced("x".into()), None, Some(sample())).label(),
        "reset"
    );
}

#[test]
fn a_checkpoint_older_than_the_last_drains_of_its_maps_is_not_restored() {
    let ours = MapsIdentity {
        boot_id: "b00t".into(),
        maps_id: 42,
    };
    let mut cp = sample();
    cp.drained_epoch = Some(10);
    for (epoch, restored) in [
        (11, true),
        (12, true),
        (13, false),
        (10, false),
        (200, false),
    ] {
        let t = StartTotals::decide(&MapsOrigin::Adopted, None, Some(cp.clone()), &ours, epoch);
        assert_eq!(
            matches!(t, StartTotals::Restored { .. }),
            restored,
            "epoch {epoch}: {t:?}"
        );
        if !restored {
            assert!(
                matches!(&t, StartTotals::Reset { reason, .. } if reason.contains("stale")),
                "{t:?}"
            );
        }
    }
    // Epochs wrap.
    cp.drained_epoch = Some(u32::MAX);
    assert!(matches!(
        StartTotals::decide(&MapsOrigin::Adopted, None, Some(cp), &ours, 1),
        StartTotals::Restored { .. }
    ));
}

#[test]
fn an_unreadable_checkpoint_is_kept_aside() {
    let dir = std::env::temp_dir().join(format!("netcost-cp-aside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = CheckpointStore::in_dir(&dir);
    for i in 0..6 {
        std::fs::write(&store.path, format!("{{truncated {i}")).unwrap();
        assert!(store.load().is_err());
        let aside = store.set_aside().unwrap();
        assert_eq!(
            std::fs::read_to_string(&aside).unwrap(),
            format!("{{truncated {i}")
        );
        assert!(!store.path.exists());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let kept = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(kept, KEPT_ASIDE, "the newest few are kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_or_foreign_checkpoint_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("netcost-cp-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = CheckpointStore::in_dir(&dir);
    std::fs::write(&store.path, "{\"format\": 1, \"abi\": 3").unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("checkpoint.json") && e.contains("EOF"), "{e}");
    let mut cp = sample();
    cp.format = 99;
    std::fs::write(&store.path, serde_json::to_string(&cp).unwrap()).unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("format 99"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
