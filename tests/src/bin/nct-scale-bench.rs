//! A busy node, side by side with the conntrack-polling design: 250 pods (their own pod cgroups,
//! on the node's network like hostNetwork pods) send UDP to 10,000 remote pod addresses of 999
//! other nodes, one datagram per flow per interval — first 10,000 flows per interval, then
//! 100,000 — while the agent drains every 5 s and is scraped every 15 s, and a model of
//! conntrack polling (tests/src/ctmodel.rs: full table read with `nf_conntrack_acct=1` every
//! 5 s, per-entry deltas, every entry classified) reads the same node's table. Then short TCP
//! connections and one bulk TCP transfer, counted by both and by wire meters. Real packets over a
//! veth, real kernel programs, real conntrack; nothing synthetic but the addresses. Run by
//! `cargo xtask bench` (root); prints Markdown tables and writes `scale.json`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netcost_tests::{
    agent::{Agent, Samples},
    apiserver::{node_json, pod_json, ApiServer, ApiState},
    ctmodel::{Poll, Poller, Prefixes},
    in_ns,
    meter::Meter,
    spawn_in, CgroupTree, Netns, Proc,
};
use serde_json::json;

const NODE: &str = "ip-10-0-0-1.ec2.internal";
const NODES: usize = 1000;
const PODS: usize = 250;
const PEERS: usize = 10_000;
const INTERVAL: Duration = Duration::from_secs(5);
/// 20 bytes of IPv4, 8 of UDP, 36 of payload: a 64-byte packet on the wire (L3).
const PAYLOAD: usize = 36;
const PACKET: u64 = 64;
const SINK: &str = "10.0.0.2";

fn peer(i: usize) -> Ipv4Addr {
    let n = 1 + i % (NODES - 1);
    Ipv4Addr::new(
        100,
        64 + (n / 250) as u8,
        (n % 250) as u8,
        10 + (i / (NODES - 1)) as u8,
    )
}

fn pod_uid(i: usize) -> String {
    format!("5ca1e000-0000-4000-8000-{i:012}")
}

fn zone(i: usize) -> (&'static str, &'static str) {
    [
        ("us-east-1a", "use1-az1"),
        ("us-east-1b", "use1-az2"),
        ("us-east-1c", "use1-az4"),
    ][i % 3]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("generate") {
        let arg = |i: usize| {
            args.get(i)
                .context("generate LIST REMOTES_PER_POD SOCKETS_PER_POD ROUNDS")
        };
        return generate(
            Path::new(arg(1)?),
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
        );
    }
    bench()
}

/// The sender: `sockets_per_pod` UDP sockets per pod, each opened while this process sits in
/// that pod's cgroup (a socket keeps the cgroup it was created in), then `rounds` intervals of
/// one datagram from every socket to each of its pod's `remotes_per_pod` remote ends, spread
/// over the interval. Conntrack sees one entry per socket and remote end; netcost one per pod
/// and remote end.
fn generate(
    list: &Path,
    remotes_per_pod: usize,
    sockets_per_pod: usize,
    rounds: usize,
) -> Result<()> {
    // Up to the hard limit (10,000 sockets in the pooled phase; the hard limit may not be
    // raised without CAP_SYS_RESOURCE).
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) };
    files.rlim_cur = files.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &files) } != 0 {
        bail!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
    }
    let text = std::fs::read_to_string(list)?;
    let mut lines = text.lines();
    let home = lines.next().context("no home cgroup")?;
    let me = std::process::id().to_string();
    let mut sockets = Vec::new();
    for cgroup in lines {
        std::fs::write(Path::new(cgroup).join("cgroup.procs"), &me)
            .with_context(|| format!("joining {cgroup}"))?;
        let pod_sockets = (0..sockets_per_pod)
            .map(|_| UdpSocket::bind("0.0.0.0:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        sockets.push(pod_sockets);
    }
    std::fs::write(Path::new(home).join("cgroup.procs"), &me)?;
    println!("ready");
    std::io::stdout().flush()?;
    let payload = [0u8; PAYLOAD];
    let total = sockets.len() * sockets_per_pod * remotes_per_pod;
    let (mut sent, mut failed) = (0u64, 0u64);
    for _ in 0..rounds {
        let start = Instant::now();
        let mut n = 0usize;
        for (p, pod_sockets) in sockets.iter().enumerate() {
            for socket in pod_sockets {
                for k in 0..remotes_per_pod {
                    let addr = SocketAddr::from((peer((p * remotes_per_pod + k) % PEERS), 5000));
                    match socket.send_to(&payload, addr) {
                        Ok(_) => sent += 1,
                        Err(_) => failed += 1,
                    }
                    n += 1;
                    if n.is_multiple_of(500) {
                        let due = start + INTERVAL.mul_f64(0.8 * n as f64 / total as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                }
            }
        }
        std::thread::sleep((start + INTERVAL).saturating_duration_since(Instant::now()));
    }
    println!("sent {sent} failed {failed}");
    Ok(())
}

struct Node {
    // Drop order: processes, then namespaces, then cgroups.
    _server: Option<Proc>,
    node: Netns,
    sink: Netns,
    pods: Vec<PathBuf>,
    home: PathBuf,
    _cgroups: CgroupTree,
}

fn build() -> Result<Node> {
    netcost_tests::cleanup_leftovers();
    let cgroups = CgroupTree::new()?;
    let home = cgroups.create("scale-generator")?;
    let pods = (0..PODS)
        .map(|i| cgroups.create(&format!("kubepods/besteffort/pod{}/c0", pod_uid(i))))
        .collect::<Result<Vec<_>>>()?;
    let node = Netns::new("scale-node")?;
    let sink = Netns::new("scale-sink")?;
    node.ip("link add up0 type veth peer name eth0")?;
    node.ip(&format!("link set eth0 netns {}", sink.name))?;
    node.ip("addr add 10.0.0.1/30 dev up0")?;
    node.ip("link set up0 up")?;
    node.ip(&format!("route add default via {SINK}"))?;
    sink.ip(&format!("addr add {SINK}/30 dev eth0"))?;
    sink.ip("link set eth0 up")?;
    // Conntrack runs in a namespace once a rule uses it; byte counters need acct.
    node.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW,ESTABLISHED",
        "-j",
        "ACCEPT",
    ])?;
    node.sysctl("net.netfilter.nf_conntrack_acct=1")?;
    let traffic = std::env::current_exe()?.with_file_name("nct-traffic");
    let traffic = traffic.to_string_lossy().into_owned();
    let mut server = spawn_in(
        &home,
        Some(&sink.name),
        &[&traffic, "serve", &format!("{SINK}:7000")],
        true,
    )?;
    let mut line = String::new();
    BufReader::new(server.child().stdout.take().context("server stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("traffic server did not start");
    }
    Ok(Node {
        _server: Some(server),
        node,
        sink,
        pods,
        home,
        _cgroups: cgroups,
    })
}

fn api_state() -> Arc<ApiState> {
    let state = Arc::new(ApiState::new());
    for i in 0..NODES {
        let name = if i == 0 {
            NODE.to_owned()
        } else {
            format!("ip-10-{}-{}-1.ec2.internal", i / 250, i % 250)
        };
        let (z, id) = zone(i);
        let cidr = format!("100.{}.{}.0/24", 64 + i / 250, i % 250);
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        state.apply(
            "/api/v1",
            "nodes",
            node_json(&name, z, "us-east-1", id, &ip, &[&cidr]),
        );
    }
    for i in 0..PODS {
        let pod = pod_json(
            "scale",
            &format!("scale-{i}"),
            &pod_uid(i),
            NODE,
            &["10.0.0.1"],
            None,
            true,
        );
        state.apply("/api/v1", "pods", pod);
    }
    state
}

/// The model's view of the node: its address is the local end; node ranges by zone.
fn model() -> Result<Poller> {
    let ranges = (0..NODES)
        .map(|i| {
            let a = Ipv4Addr::new(100, 64 + (i / 250) as u8, (i % 250) as u8, 0);
            (a, 24, u8::from(zone(i).0 != zone(0).0))
        })
        .collect();
    let locals = HashMap::from([(u32::from(Ipv4Addr::new(10, 0, 0, 1)), 0u16)]);
    Ok(Poller::new(locals, Prefixes::new(ranges))?)
}

/// Runs the model in the node's namespace every interval until `stop`, then once more.
fn start_model(
    netns: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(Vec<Poll>, Poller)>> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: setns on a descriptor we own; it moves only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let mut poller = model()?;
        let mut polls = Vec::new();
        let start = Instant::now();
        for k in 1.. {
            let last = stop.load(Ordering::SeqCst);
            polls.push(poller.poll()?);
            if last {
                break;
            }
            let due = start + INTERVAL * k;
            while Instant::now() < due && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok((polls, poller))
    })
}

fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(ticks * 1_000_000_000 / hz.max(1))
}

fn egress(s: &Samples, want: &[(&str, &str)]) -> f64 {
    let mut w = vec![("direction", "egress")];
    w.extend_from_slice(want);
    s.sum("netcost_network_bytes_total", &w)
}

/// Drain time histogram between two scrapes: (count, sum, p99 upper bound in seconds).
fn drain_times(a: &Samples, b: &Samples) -> (f64, f64, f64) {
    let name = "netcost_drain_duration_seconds";
    let count = b.sum(&format!("{name}_count"), &[]) - a.sum(&format!("{name}_count"), &[]);
    let sum = b.sum(&format!("{name}_sum"), &[]) - a.sum(&format!("{name}_sum"), &[]);
    let mut buckets: Vec<(f64, f64)> = b
        .series
        .get(&format!("{name}_bucket"))
        .into_iter()
        .flatten()
        .filter_map(|(l, v)| {
            let le = l.get("le")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((
                le,
                v - a
                    .value(&format!("{name}_bucket"), &[("le", l.get("le")?)])
                    .unwrap_or(0.0),
            ))
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let p99 = buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * count)
        .map_or(f64::NAN, |(le, _)| *le);
    (count, sum, p99)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main_bench_rounds() -> usize {
    std::env::var("NETCOST_BENCH_SCALE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8)
}

fn bench() -> Result<()> {
    let rounds = main_bench_rounds();
    let node = build()?;
    let list = std::env::temp_dir().join("nct-scale-cgroups.txt");
    let mut text = format!("{}\n", node.home.display());
    for p in &node.pods {
        text.push_str(&format!("{}\n", p.display()));
    }
    std::fs::write(&list, text)?;
    let state = api_state();
    let api = ApiServer::start(state)?;
    let config = format!(
        "drain_interval_seconds: 5\nmaps: {{ flow_entries: 262144 }}\nkubernetes:\n  enabled: true\n  api_server: \"{}\"\n  node_name: {NODE}\n  watch_endpointslices: false\n",
        api.url()
    );
    let mut agent = Agent::start("scale-bench", &config)?;
    for _ in 0..300 {
        if agent
            .metrics()
            .ok()
            .and_then(|s| s.value("netcost_pods_with_series", &[]))
            == Some(PODS as f64)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut phases = Vec::new();
    println!("\n| traffic per 5 s interval | conntrack entries | netcost flow entries | netcost: agent CPU, % of one core | netcost: CPU per 5 s interval | netcost: drain mean / p99 (≤) | netcost: /metrics scrape, max | netcost: RSS max | model: CPU per poll, median (max) | model ÷ netcost, CPU | bytes: meters | netcost | model |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // (remote ends per pod, sockets per pod): every pod to its own remote ends, one socket
    // each (as many flow entries as conntrack entries), then connection pools (40 sockets per
    // pod to 10 remote ends: conntrack holds 100,000 entries, netcost 2,500).
    for (remotes, sockets) in [(40usize, 1usize), (400, 1), (10, 40)] {
        phases.push(udp_phase(
            &node, &mut agent, &list, remotes, sockets, rounds,
        )?);
    }
    let tcp = tcp_phases(&node, &mut agent)?;
    agent.stop()?;
    drop(node);
    netcost_tests::bench_json(
        "scale",
        &json!({ "pods": PODS, "remote_peers": PEERS, "interval_seconds": INTERVAL.as_secs(), "rounds": rounds, "udp": phases, "tcp": tcp }),
    )
}

fn udp_phase(
    node: &Node,
    agent: &mut Agent,
    list: &Path,
    remotes_per_pod: usize,
    sockets_per_pod: usize,
    rounds: usize,
) -> Result<serde_json::Value> {
    let flows = remotes_per_pod * PODS;
    let entries = flows * sockets_per_pod;
    flush_conntrack(node)?;
    let before = agent.metrics()?;
    let argv0 = std::env::current_exe()?.to_string_lossy().into_owned();
    let mut generator = spawn_in(
        &node.home,
        Some(&node.node.name),
        &[
            &argv0,
            "generate",
            &list.to_string_lossy(),
            &remotes_per_pod.to_string(),
            &sockets_per_pod.to_string(),
            &rounds.to_string(),
        ],
        true,
    )?;
    let mut out = BufReader::new(
        generator
            .child()
            .stdout
            .take()
            .context("generator stdout")?,
    );
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("generator did not start: {line}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let model = start_model(&node.node.name, stop.clone());
    // The first interval fills the maps and the table; measure from the second on.
    std::thread::sleep(INTERVAL);
    let pid = agent.pid();
    let (t0, c0, m0) = (Instant::now(), cpu_ns(pid)?, agent.metrics()?);
    let (mut scrape_max, mut scrape_bytes, mut rss_max) = (Duration::ZERO, 0, 0);
    let mut next_scrape = Instant::now();
    line.clear();
    let done = loop {
        if let Some(status) = generator.child().try_wait()? {
            break status;
        }
        if Instant::now() >= next_scrape {
            let s = Instant::now();
            let (_, body) = agent.get("/metrics")?;
            scrape_max = scrape_max.max(s.elapsed());
            scrape_bytes = body.len();
            rss_max = rss_max.max(agent.memory_kib()?.0);
            next_scrape += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (t1, c1, m1) = (Instant::now(), cpu_ns(pid)?, agent.metrics()?);
    if !done.success() {
        bail!("generator failed: {done}");
    }
    out.read_line(&mut line)?;
    let sent: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("sent")?;
    // Two more drains take the last interval's bytes; the model reads the table once more.
    std::thread::sleep(INTERVAL * 2 + Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (polls, poller) = model
        .join()
        .map_err(|_| anyhow::anyhow!("model panicked"))??;
    let after = agent.metrics()?;
    let cpu = (c1 - c0) as f64 / (t1 - t0).as_nanos() as f64;
    let (drains, drain_sum, p99) = drain_times(&m0, &m1);
    let mut model_cpu: Vec<f64> = polls
        .iter()
        .filter(|p| p.entries >= entries * 9 / 10)
        .map(|p| p.cpu_ns as f64 / 1e6)
        .collect();
    let model_max = model_cpu.iter().copied().fold(0.0, f64::max);
    let model_median = median(&mut model_cpu);
    let netcost_per_interval = cpu * INTERVAL.as_secs_f64() * 1000.0;
    let counted =
        egress(&after, &[("namespace", "scale")]) - egress(&before, &[("namespace", "scale")]);
    let model_bytes: u64 = poller
        .totals
        .iter()
        .filter(|(k, _)| k.2 == 0 && k.1 != 255)
        .map(|(_, v)| v)
        .sum();
    let meters = sent * PACKET;
    println!(
        "| {} | {entries} | {flows} | {:.2} % | {netcost_per_interval:.1} ms | {:.2} / {:.1} ms over {drains} drains | {:.1} ms ({:.1} MiB) | {:.1} MiB | {model_median:.1} ms ({model_max:.1}) over {} polls | {:.1}× | {meters} | {counted:.0} | {model_bytes} |",
        if sockets_per_pod == 1 {
            format!("{PODS} pods × {remotes_per_pod} remote ends, one socket each")
        } else {
            format!("{PODS} pods × {sockets_per_pod} sockets × {remotes_per_pod} remote ends")
        },
        cpu * 100.0,
        drain_sum / drains.max(1.0) * 1000.0,
        p99 * 1000.0,
        scrape_max.as_secs_f64() * 1000.0,
        scrape_bytes as f64 / 1048576.0,
        rss_max as f64 / 1024.0,
        model_cpu.len(),
        model_median / netcost_per_interval,
    );
    Ok(json!({
        "netcost_flow_entries": flows,
        "conntrack_entries": entries,
        "sockets_per_pod": sockets_per_pod,
        "netcost_cpu_percent_of_one_core": cpu * 100.0,
        "netcost_cpu_ms_per_interval": netcost_per_interval,
        "drains": drains,
        "drain_mean_ms": drain_sum / drains.max(1.0) * 1000.0,
        "drain_p99_le_seconds": p99,
        "scrape_max_ms": scrape_max.as_secs_f64() * 1000.0,
        "exposition_bytes": scrape_bytes,
        "rss_max_mib": rss_max as f64 / 1024.0,
        "model_cpu_ms_per_poll_median": model_median,
        "model_cpu_ms_per_poll_max": model_max,
        "model_polls": polls.iter().map(|p| json!({"entries": p.entries, "cpu_ms": p.cpu_ns as f64 / 1e6})).collect::<Vec<_>>(),
        "bytes_meters": meters,
        "bytes_netcost": counted,
        "bytes_model": model_bytes,
    }))
}

/// Short TCP connections (each far shorter than the poll interval), then one bulk transfer:
/// netcost and the model against wire meters on the node's uplink.
fn tcp_phases(node: &Node, agent: &mut Agent) -> Result<serde_json::Value> {
    let egress_meter = Meter::install(
        &node.node.name,
        "up0",
        &[("sink", vec![("ip", format!("match ip dst {SINK}/32"))])],
    )?;
    let ingress_meter = Meter::install(
        &node.sink.name,
        "eth0",
        &[("node", vec![("ip", "match ip dst 10.0.0.1/32".to_owned())])],
    )?;
    let traffic = std::env::current_exe()?
        .with_file_name("nct-traffic")
        .to_string_lossy()
        .into_owned();
    let addr = format!("{SINK}:7000");
    println!("\n| TCP to one remote | direction | meters (wire bytes) | netcost | model of conntrack polling | model missed |");
    println!("|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for (case, pod, argv) in [
        (
            "500 connections of 20 kB, each under a second",
            0usize,
            vec!["storm", addr.as_str(), "500", "20000"],
        ),
        (
            "one bulk transfer of 500 MB",
            1,
            vec!["send", addr.as_str(), "500000000"],
        ),
    ] {
        flush_conntrack(node)?;
        let name = format!("scale-{pod}");
        let before = agent.metrics()?;
        let meters_before = (sum(&egress_meter)?, sum(&ingress_meter)?);
        let stop = Arc::new(AtomicBool::new(false));
        let model = start_model(&node.node.name, stop.clone());
        let mut full = vec![traffic.as_str()];
        full.extend(argv.iter().copied());
        spawn_in(&node.pods[pod], Some(&node.node.name), &full, false)?.finish()?;
        std::thread::sleep(INTERVAL * 2 + Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        let (_, poller) = model
            .join()
            .map_err(|_| anyhow::anyhow!("model panicked"))??;
        let after = agent.metrics()?;
        let meters = [
            sum(&egress_meter)? - meters_before.0,
            sum(&ingress_meter)? - meters_before.1,
        ];
        for (d, direction) in [(0u8, "egress"), (1, "ingress")] {
            let want = [("pod", name.as_str()), ("direction", direction)];
            let counted = after.sum("netcost_network_bytes_total", &want)
                - before.sum("netcost_network_bytes_total", &want);
            let modelled: u64 = poller
                .totals
                .iter()
                .filter(|(k, _)| k.2 == d && k.1 == 255)
                .map(|(_, v)| v)
                .sum();
            let m = meters[d as usize];
            println!(
                "| {case} | {direction} | {m} | {counted:.0} | {modelled} | {:.2} % |",
                (m as f64 - modelled as f64) / m as f64 * 100.0
            );
            out.push(json!({"case": case, "direction": direction, "meters": m, "netcost": counted, "model": modelled}));
        }
    }
    Ok(json!(out))
}

/// Empties the node's conntrack table, so a phase's model starts with no entry of the last.
fn flush_conntrack(node: &Node) -> Result<()> {
    // `conntrack -F` says on stderr how many entries it flushed; only failure matters.
    in_ns(&node.node.name, &["conntrack", "-F"]).map(drop)
}

fn sum(meter: &Meter) -> Result<u64> {
    Ok(meter.read()?.values().sum::<u64>())
}
