use super::*;
use crate::{
    attribute::CgroupResolver,
    classify::{route::Router, topology::StaticTopology, TopologyMetrics},
    config::PricesConfig,
    expose::{encode, Format},
    inventory::{KubeView, PodMeta, SharedInventory, Workload},
    price::{PriceMetrics, PriceTable},
    state::{CheckpointMetrics, CheckpointStore, MapsIdentity},
    vocab::{Place, Registries, Route},
};
use agent_common::{OverflowKey, DIRECTION_EGRESS, FAMILY_IPV4};
use std::os::unix::fs::MetadataExt as _;
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

/// Buffers that hand out whatever the test queued, once.
#[derive(Default)]
struct Queue {
    flows: Vec<(FlowKey, Counter)>,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl CountingBuffers for Queue {
    type Error = Never;
    fn epoch(&mut self) -> Result<u32, Never> {
        Ok(0)
    }
    fn set_epoch(&mut self, _: u32) -> Result<(), Never> {
        Ok(())
    }
    fn wait_for_writers(&mut self) -> Result<(), Never> {
        Ok(())
    }
    fn read_flows(&mut self, _: u32) -> Result<Vec<(FlowKey, Counter)>, Never> {
        Ok(self.flows.clone())
    }
    fn read_overflow(&mut self, _: u32) -> Result<Vec<(OverflowKey, Counter)>, Never> {
        Ok(Vec::new())
    }
    fn read_cached(&mut self, _: u32) -> Result<Vec<(FlowKey, Counter)>, Never> {
        Ok(Vec::new())
    }
    fn clear(
        &mut self,
        _: u32,
        _: &[FlowKey],
        _: &[OverflowKey],
    ) -> Result<crate::drain::Undeleted, Never> {
        self.flows.clear();
        Ok(Default::default())
    }
    fn lost(&mut self) -> Result<[Counter; 2], Never> {
        Ok([Counter::default(); 2])
    }
}

const UID: &str = "0a0b0c0d-1111-4222-8333-444455556666";

struct Fixture {
    dir: std::path::PathBuf,
    cgroup_id: u64,
    inventory: SharedInventory,
    registries: Registries,
    checkpoint_metrics: CheckpointMetrics,
    pipeline: Pipeline<Queue>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str, grace: Duration) -> Fixture {
    let dir = std::env::temp_dir().join(format!("netcost-pipeline-{name}-{}", std::process::id()));
    let pod_dir = dir.join(format!("kubepods/besteffort/pod{UID}/ctr"));
    std::fs::create_dir_all(&pod_dir).unwrap();
    let cgroup_id = std::fs::metadata(&pod_dir).unwrap().ino();
    let mut registries = Registries::default();
    let checkpoint_metrics = CheckpointMetrics::register(&mut registries);
    let drain_metrics = DrainMetrics::register(&mut registries);
    let inventory = Inventory::shared();
    let base = StaticTopology::new(
        Place::zone("us-east-1a", "us-east-1"),
        vec![],
        vec![(
            "10.0.16.0/20".parse().unwrap(),
            Place::zone("us-east-1b", "us-east-1"),
        )],
    );
    let nat = NatTable::new(
        vec!["172.20.0.0/16".parse().unwrap()],
        1024,
        Duration::from_secs(30),
    )
    .shared();
    let stages = Stages {
        attributor: Attributor::new(
            CgroupResolver::new(dir.clone(), Duration::from_secs(600)),
            grace,
            Duration::from_secs(3600),
        ),
        traffic: TrafficMetrics::register(&mut registries, Route::Direct, true),
        classifier: Classifier::new(
            base,
            Arc::new(RwLock::new(crate::inventory::aws::CloudFacts::default())),
            Some(KubeView {
                inventory: inventory.clone(),
                node_name: "node-a".into(),
                watch_nodes: false,
                watch_endpointslices: false,
                health: Default::default(),
            }),
            Router::default(),
            Some(nat),
            Duration::from_millis(200),
            TopologyMetrics::register(&mut registries),
        )
        .name_peers(),
        destinations: DestinationMetrics::register(
            &mut registries,
            &crate::config::DestinationsConfig::default(),
        ),
        pricer: Pricer::new(
            PriceTable::built_in(),
            PricesConfig::default(),
            PriceMetrics::register(&mut registries),
        ),
    };
    let pipeline = Pipeline::new(
        Drainer::resume(Queue::default(), None).unwrap().0,
        stages,
        None,
        drain_metrics,
    );
    Fixture {
        dir,
        cgroup_id,
        inventory,
        registries,
        checkpoint_metrics,
        pipeline,
    }
}

fn flow(f: &mut Fixture, remote: [u8; 4], bytes: u64) {
    let key = FlowKey::new(
        f.cgroup_id,
        [u32::from_ne_bytes(remote), 0, 0, 0],
        FAMILY_IPV4,
        DIRECTION_EGRESS,
    );
    let mut c = Counter::default();
    c.add(bytes, 1);
    f.pipeline.drainer.buffers_mut().flows.push((key, c));
}

/// The API lists these pods (a full list, then synced).
fn list_pods(f: &Fixture, pods: Vec<PodMeta>) {
    let mut inv = f.inventory.write().unwrap();
    inv.pods_init();
    for pod in pods {
        inv.pod_apply(pod);
    }
    inv.pods_init_done();
}

/// Both registries, as a scrape gets them.
fn exposition(f: &Fixture) -> String {
    let r = &f.registries;
    encode(&r.durable, Format::PrometheusText).unwrap()
        + &encode(&r.live, Format::PrometheusText).unwrap()
}

fn cart() -> PodMeta {
    PodMeta {
        uid: UID.into(),
        namespace: "shop".into(),
        name: "cart-1".into(),
        workload: Workload {
            kind: "Deployment".into(),
            name: "cart".into(),
        },
        host_network: false,
        ips: vec![],
        containers: vec![],
        finished: false,
    }
}

#[test]
fn bytes_of_an_unknown_pod_are_held_until_the_api_names_it() {
    let mut f = fixture("hold", Duration::from_secs(300));
    flow(&mut f, [10, 0, 16, 7], 1000);
    flow(&mut f, [203, 0, 113, 1], 500);
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    assert!(
        !text.contains(UID),
        "attributed before the pod was known:\n{text}"
    );
    assert!(text.contains("netcost_held_bytes 1500"), "{text}");
    // The API catches up: the pod is listed.
    list_pods(&f, vec![cart()]);
    flow(&mut f, [10, 0, 16, 7], 24);
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    let line = format!("netcost_network_bytes_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"cross_zone\",direction=\"egress\"}} 1024");
    assert!(text.contains(&line), "{text}");
    let line = format!("netcost_network_bytes_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"internet\",direction=\"egress\"}} 500");
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("netcost_held_bytes 0"), "{text}");
    assert!(
        text.contains("netcost_hold_expired_bytes_total 0"),
        "{text}"
    );
}

#[test]
fn deleted_pods_keep_their_series_for_the_grace_period_then_lose_them() {
    let mut f = fixture("grace", Duration::from_millis(300));
    list_pods(&f, vec![cart()]);
    flow(&mut f, [203, 0, 113, 1], 77);
    f.pipeline.tick().unwrap();
    assert!(exposition(&f).contains("pod=\"cart-1\""));
    // Deleted from the API and its cgroup gone.
    f.inventory.write().unwrap().pod_delete(UID);
    std::fs::remove_dir_all(&f.dir).unwrap();
    f.pipeline.attributor.resolver_mut().rescan();
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    assert!(
        text.contains("traffic_class=\"internet\",direction=\"egress\"} 77"),
        "final value kept:\n{text}"
    );
    std::thread::sleep(Duration::from_millis(350));
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    assert!(
        !text.contains("cart-1"),
        "series outlived the grace period:\n{text}"
    );
    assert!(text.contains("netcost_pods_with_series 0"), "{text}");
}

#[test]
fn bytes_are_priced_when_counted_and_exposed_the_kubecost_way() {
    let mut f = fixture("price", Duration::from_secs(300));
    list_pods(&f, vec![cart()]);
    // 1 GiB cross-zone and 1 GiB to the internet, sent.
    flow(&mut f, [10, 0, 16, 7], 1 << 30);
    flow(&mut f, [203, 0, 113, 1], 1 << 30);
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    let cost = |class: &str| {
        let prefix = format!("netcost_network_cost_dollars_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"{class}\",direction=\"egress\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {class} cost in\n{text}"))
            .parse::<f64>()
            .unwrap()
    };
    assert!((cost("cross_zone") - 0.01).abs() < 1e-12);
    assert!((cost("internet") - 0.09).abs() < 1e-12);
    assert!(text.contains("kubecost_pod_network_egress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"false\",same_region=\"true\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 1073741824"), "{text}");
    assert!(text.contains("kubecost_pod_network_egress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"true\",same_region=\"false\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 1073741824"), "{text}");
    // Zero series for the classes without bytes, before any byte.
    assert!(text.contains("kubecost_pod_network_ingress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"false\",same_region=\"false\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 0"), "{text}");
    assert!(
        text.contains("kubecost_network_zone_egress_cost 0.01"),
        "{text}"
    );
    assert!(
        text.contains("kubecost_network_internet_egress_cost 0.09"),
        "{text}"
    );
    assert!(
        text.contains("netcost_price_dollars_per_gigabyte{price=\"nat_gateway\"} 0.045"),
        "{text}"
    );
}

/// The counters of an exposition (every `_total` line), sorted.
fn counter_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && l.split(['{', ' '])
                    .next()
                    .is_some_and(|n| n.ends_with("_total"))
        })
        .filter(|l| {
            !l.starts_with("netcost_map_entry_errors") && !l.starts_with("netcost_drain_errors")
        })
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// A successor restoring a checkpoint exposes exactly the same counters, held bytes included
/// (attributed once the pod is known), and the checkpoint survives the file round trip.
#[test]
fn restored_totals_equal_the_checkpointed_ones() {
    let mut a = fixture("snap-a", Duration::from_secs(300));
    list_pods(&a, vec![cart()]);
    flow(&mut a, [10, 0, 16, 7], 123_456_789);
    flow(&mut a, [203, 0, 113, 1], 1 << 30);
    flow(&mut a, [10, 0, 1, 9], 77);
    a.pipeline.tick().unwrap();
    let now = Instant::now();
    let checkpoint = a.pipeline.snapshot(now);
    let store = crate::state::CheckpointStore::in_dir(&a.dir);
    store.save(&checkpoint).unwrap();
    let checkpoint = store.load().unwrap().unwrap();

    let mut b = fixture("snap-b", Duration::from_secs(300));
    list_pods(&b, vec![cart()]);
    b.pipeline.restore(&checkpoint, now);
    let before = counter_lines(&exposition(&a));
    assert!(
        before
            .iter()
            .any(|l| l.contains("cross_zone") && l.ends_with(" 123456789")),
        "{before:?}"
    );
    assert_eq!(counter_lines(&exposition(&b)), before);
    // And it goes on from there.
    flow(&mut b, [10, 0, 16, 7], 11);
    b.pipeline.tick().unwrap();
    let text = exposition(&b);
    assert!(
        text.lines().any(
            |l| l.starts_with("netcost_network_bytes_total{owner=\"pod\"")
                && l.contains("cross_zone")
                && l.contains("egress")
                && l.ends_with(" 123456800")
        ),
        "{text}"
    );
}

/// A per-connection entry of `cart-1` to the ClusterIP 172.20.0.10:80 from 10.0.1.2:`port`.
fn service_flow(f: &mut Fixture, port: u16, bytes: u64) {
    let mut key = FlowKey::new(
        f.cgroup_id,
        [u32::from_ne_bytes([172, 20, 0, 10]), 0, 0, 0],
        FAMILY_IPV4,
        DIRECTION_EGRESS,
    );
    key.local = [u32::from_ne_bytes([10, 0, 1, 2]), 0, 0, 0];
    key.local_port = port.to_be();
    key.remote_port = 80u16.to_be();
    key.protocol = 6;
    let mut c = Counter::default();
    c.add(bytes, 1);
    f.pipeline.drainer.buffers_mut().flows.push((key, c));
}

#[test]
fn service_bytes_go_to_the_backend_conntrack_names_or_wait_then_count_as_unresolved() {
    use crate::classify::nat::conntrack::{Connection, Event, Tuple};
    let mut f = fixture("nat", Duration::from_secs(300));
    list_pods(&f, vec![cart()]);
    let tuple = |src: &str, sport: u16, dst: &str, dport: u16| Tuple {
        protocol: 6,
        src: src.parse().unwrap(),
        src_port: sport,
        dst: dst.parse().unwrap(),
        dst_port: dport,
    };
    let nat = f.pipeline.classifier.nat_table().unwrap();
    nat::lock(&nat).apply(
        &Event::New(Connection {
            original: tuple("10.0.1.2", 40_000, "172.20.0.10", 80),
            reply: tuple("10.0.16.9", 8080, "10.0.1.2", 40_000),
        }),
        Instant::now(),
    );
    service_flow(&mut f, 40_000, 1_000);
    // Conntrack has not named this one (yet).
    service_flow(&mut f, 40_001, 70);
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    assert!(
        text.contains(&format!(
            "pod_uid=\"{UID}\",traffic_class=\"cross_zone\",direction=\"egress\"}} 1000"
        )),
        "{text}"
    );
    assert!(text.contains("netcost_held_bytes 70"), "{text}");
    assert!(
        text.contains("netcost_nat_resolved_bytes_total 1000"),
        "{text}"
    );
    // Past nat_wait: classified by the Service address, and said so.
    std::thread::sleep(Duration::from_millis(250));
    f.pipeline.tick().unwrap();
    let text = exposition(&f);
    assert!(
        text.contains("netcost_nat_unresolved_bytes_total 70"),
        "{text}"
    );
    assert!(text.contains("netcost_held_bytes 0"), "{text}");
}

/// While the checkpoint cannot be written nothing new is exposed or deleted, nothing is
/// drained twice, and the first good save takes what waited.
#[test]
fn while_saves_fail_the_drained_entries_stay_in_the_kernel_and_count_once() {
    let mut f = fixture("unsaved", Duration::from_secs(300));
    list_pods(&f, vec![cart()]);
    // A state "directory" that is a file: every save fails.
    let state = f.dir.join("state");
    std::fs::write(&state, "not a directory").unwrap();
    f.pipeline.checkpoint = Some(Saver::new(
        CheckpointStore::in_dir(&state),
        MapsIdentity {
            boot_id: "b".into(),
            maps_id: 1,
        },
        f.checkpoint_metrics.clone(),
    ));
    flow(&mut f, [203, 0, 113, 1], 1000);
    let internet = format!("pod_uid=\"{UID}\",traffic_class=\"internet\",direction=\"egress\"}} ");
    let total = |f: &Fixture| {
        exposition(f)
            .lines()
            .find(|l| l.starts_with("netcost_network_bytes_total") && l.contains(&internet))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    for _ in 0..3 {
        assert_eq!(f.pipeline.tick().unwrap(), Durability::NotSaved);
        assert_eq!(
            f.pipeline.drainer.buffers().flows.len(),
            1,
            "the entry stays in the kernel"
        );
    }
    assert_eq!(total(&f), Some(1000), "counted once in memory");
    assert!(exposition(&f).contains("netcost_checkpoint_errors_total 3"));
    // The disk comes back: the waiting batch is saved and deleted, then drains go on.
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    assert_eq!(f.pipeline.tick().unwrap(), Durability::Saved);
    assert!(f.pipeline.drainer.buffers().flows.is_empty());
    assert_eq!(total(&f), Some(1000));
    flow(&mut f, [203, 0, 113, 1], 10);
    assert_eq!(f.pipeline.tick().unwrap(), Durability::Saved);
    assert_eq!(total(&f), Some(1010));
    let saved = CheckpointStore::in_dir(&state).load().unwrap().unwrap();
    let bytes: u64 = saved
        .totals
        .traffic
        .iter()
        .filter(|t| t.labels.destination.class == TrafficClass::Internet)
        .map(|t| t.bytes)
        .sum();
    assert_eq!(bytes, 1010, "the checkpoint holds exactly what was counted");
}

mod grouped;
