//! What destination series cost the agent at 250 pods: the user-space ranking tables and series
//! (the kernel side is unchanged: destinations read the flow entries the drain already takes).
//! Each pod, in both directions, talks to 8 steady remote ends and, at every drain, to N others
//! (the argument, default 30) drawn from a pool of 10,000 addresses; 120 drains. Run by
//! `cargo xtask bench` (with 0 and 30); prints a Markdown row (`--header`: the header first).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use agent::{
    config::DestinationsConfig,
    expose::{encode, DestinationMetrics, Format},
    vocab::{
        Destination, Direction, Owner, Peer, PeerKind, PodLabels, Registries, TrafficClass,
        TrafficLabels,
    },
};

const PODS: usize = 250;
const STEADY: u32 = 8;
/// Remote ends drawn at every drain (the first argument; default 30).
fn spray() -> u32 {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30)
}
const POOL: u32 = 10_000;
const DRAINS: u32 = 120;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn labels(pod: usize, direction: Direction, class: TrafficClass) -> TrafficLabels {
    TrafficLabels {
        owner: Owner::Pod,
        pod: PodLabels {
            namespace: format!("team-{}", pod % 25),
            pod: format!("svc-{}-5f7c9-{pod:05}", pod % 50),
            pod_uid: format!("00000000-0000-4000-8000-{pod:012}"),
            workload_kind: "Deployment".into(),
            workload: format!("svc-{}", pod % 50),
        },
        destination: Destination::from(class),
        direction,
    }
}

/// A small xorshift: the same draws on every run.
struct Draw(u64);
impl Draw {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(POOL)) as u32
    }
}

fn main() {
    let spray = spray();
    let mut registries = Registries::default();
    let config = DestinationsConfig::default();
    let before = rss_kib();
    let mut m = DestinationMetrics::register(&mut registries, &config);
    let services: Vec<Peer> = (0..STEADY)
        .map(|s| {
            Peer::named(
                PeerKind::Service,
                "team-1",
                &format!("db-{s}"),
                Some("us-east-1b"),
            )
        })
        .collect();
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let mut flush = Vec::new();
    let t0 = Instant::now();
    for drain in 0..DRAINS {
        for pod in 0..PODS {
            for direction in Direction::BOTH {
                let steady = labels(pod, direction, TrafficClass::CrossZone);
                for (i, peer) in services.iter().enumerate() {
                    m.add(
                        &steady,
                        peer.clone(),
                        1_000_000 + i as u64 * 10_000,
                        Some(0.00001),
                    );
                }
                let sprayed = labels(pod, direction, TrafficClass::SameZone);
                for _ in 0..spray {
                    let addr = IpAddr::V4(Ipv4Addr::from(0x0a10_0000 + draw.next()));
                    m.add(&sprayed, Peer::address(addr, false, None), 1_500, None);
                }
            }
        }
        let started = Instant::now();
        m.flush(t0 + Duration::from_secs(5 * u64::from(drain)));
        flush.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let after = rss_kib();
    let text = encode(&registries.durable, Format::PrometheusText).unwrap_or_default();
    let series = text
        .lines()
        .filter(|l| l.starts_with("netcost_destination_bytes_total{"))
        .count();
    let others = text
        .lines()
        .filter(|l| {
            l.starts_with("netcost_destination_bytes_total{") && l.contains("remote_kind=\"other\"")
        })
        .count();
    let checkpoint = serde_json::to_vec(&m.totals()).map_or(0, |v| v.len());
    flush.sort_by(f64::total_cmp);
    let p = |q: f64| flush[((flush.len() - 1) as f64 * q) as usize];
    if std::env::args().any(|a| a == "--header") {
        println!("\n| pods | remote ends per pod and direction per drain | drains | destination series (of which other) | exposition of the two families | checkpoint part | RSS added | per pod | flush p50 / p99 / max |");
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    if let Some(dir) = std::env::var_os("NETCOST_BENCH_JSON_DIR") {
        let value = serde_json::json!({
            "pods": PODS,
            "steady": STEADY,
            "new_per_drain": spray,
            "pool": POOL,
            "drains": DRAINS,
            "series": series,
            "other_series": others,
            "exposition_mib": text.len() as f64 / 1048576.0,
            "checkpoint_mib": checkpoint as f64 / 1048576.0,
            "rss_added_mib": after.saturating_sub(before) as f64 / 1024.0,
            "per_pod_kib": after.saturating_sub(before) as f64 / PODS as f64,
            "flush_ms": { "p50": p(0.5), "p99": p(0.99), "max": flush[flush.len() - 1] },
        });
        let path = std::path::Path::new(&dir).join(format!("destinations-{spray}.json"));
        if let Err(e) = std::fs::write(&path, value.to_string()) {
            eprintln!("writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    println!(
        "| {PODS} | {} ({STEADY} steady + {spray} from {POOL}) | {DRAINS} | {series} ({others}) | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.2} / {:.2} / {:.2} ms |",
        STEADY + spray,
        text.len() as f64 / 1048576.0,
        checkpoint as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 / PODS as f64,
        p(0.5),
        p(0.99),
        flush[flush.len() - 1]
    );
}
