//! `cargo xtask bench`: what the agent costs, measured side by side in one run.
//!
//! - TCP throughput and small-packet (64-byte UDP) packet rate over a veth pair between two bench
//!   namespaces, alternating runs without and with the agent;
//! - the programs' mean run time per packet, from the kernel's BPF statistics
//!   (`kernel.bpf_stats_enabled`, switched on only for that phase and restored after);
//! - the agent's resident memory and drain time.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{output, Tools};

const NS_A: &str = "nct-bench-a";
const NS_B: &str = "nct-bench-b";
const ADDR_B: &str = "198.18.0.2";
const RUN_SECONDS: u32 = 5;
/// Throughput rounds (without/with alternating): the targets are medians of at least five, as
/// identical runs on a small VM vary more than the agent's effect. `NETCOST_BENCH_ROUNDS`
/// overrides.
const ROUNDS: usize = 5;

fn ns(name: &str, argv: &[&str]) -> Result<String> {
    let netns = format!("--net=/run/netns/{name}");
    let mut cmd = Command::new("nsenter");
    cmd.arg(netns).arg("--").args(argv);
    output(&mut cmd)
}

struct Bench {
    server: Option<Child>,
}

impl Bench {
    fn setup() -> Result<Bench> {
        teardown();
        for n in [NS_A, NS_B] {
            output(Command::new("ip").args(["netns", "add", n]))?;
            ns(n, &["ip", "link", "set", "lo", "up"])?;
        }
        ns(
            NS_A,
            &[
                "ip", "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns",
                NS_B,
            ],
        )?;
        ns(
            NS_A,
            &["ip", "addr", "add", "198.18.0.1/24", "dev", "veth-a"],
        )?;
        ns(NS_A, &["ip", "link", "set", "veth-a", "up"])?;
        ns(
            NS_B,
            &["ip", "addr", "add", "198.18.0.2/24", "dev", "veth-b"],
        )?;
        ns(NS_B, &["ip", "link", "set", "veth-b", "up"])?;
        let server = Command::new("nsenter")
            .args([
                &format!("--net=/run/netns/{NS_B}"),
                "--",
                "iperf3",
                "-s",
                "-B",
                ADDR_B,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Bench {
            server: Some(server),
        })
    }

    fn iperf(&self, extra: &[&str]) -> Result<Value> {
        let secs = RUN_SECONDS.to_string();
        let mut argv = vec!["iperf3", "-c", ADDR_B, "-t", secs.as_str(), "-J"];
        argv.extend_from_slice(extra);
        let text = ns(NS_A, &argv)?;
        serde_json::from_str(&text).context("parsing iperf3 JSON")
    }

    /// Gbit/s received.
    fn tcp(&self) -> Result<f64> {
        let v = self.iperf(&[])?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("no sum_received in iperf3 output")
    }

    /// Packets per second received, 64-byte UDP payloads at full speed.
    fn udp(&self) -> Result<f64> {
        let v = self.iperf(&["-u", "-b", "0", "-l", "64"])?;
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_f64().context("no packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().context("no seconds")?;
        Ok((packets - lost) / seconds)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        teardown();
    }
}

fn teardown() {
    for n in [NS_A, NS_B] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
    }
}

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start(bin: &Path) -> Result<Agent> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = std::env::temp_dir().join("nct-bench.yaml");
        // Nothing pinned (pins only matter across restarts, not per packet); the checkpoint is
        // written at every drain as in production, into a directory of the bench's own.
        let state = std::env::temp_dir().join("nct-bench-state");
        // Each bench run starts from zero, not from the last run's checkpoint.
        let _ = std::fs::remove_dir_all(&state);
        std::fs::write(
            &config,
            format!("listen: \"127.0.0.1:{port}\"\ndrain_interval_seconds: 1\ntopology:\n  region: bench\n  zone: bench-a\nstate:\n  pin: false\n  dir: \"{}\"\n", state.display()),
        )?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let mut agent = Agent { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get("/readyz").map(|(c, _)| c) != Ok(200) {
            if let Some(s) = agent.child.try_wait()? {
                bail!("agent exited: {s}");
            }
            if Instant::now() > deadline {
                bail!("agent not ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status")?;
        Ok((code, text))
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
    }

    /// Sum of every sample of `name` (all label sets).
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").ok()?;
        let samples: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!samples.is_empty()).then(|| samples.iter().sum())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// (run_time_ns, run_cnt) of a loaded program, by name.
fn prog_stats(name: &str) -> Result<(u64, u64)> {
    let text = output(Command::new("bpftool").args(["prog", "show", "name", name, "-j"]))?;
    let v: Value = serde_json::from_str(&text)?;
    let v = if v.is_array() { v[0].clone() } else { v };
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

struct StatsGuard(String);

impl StatsGuard {
    fn enable() -> Result<StatsGuard> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(path)?.trim().to_owned();
        std::fs::write(path, "1")?;
        Ok(StatsGuard(before))
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

struct PerPacket {
    case: &'static str,
    /// ns per run of the empty program.
    baseline: f64,
    egress: f64,
    ingress: f64,
    runs: u64,
    total_ns: f64,
    wire_packets: f64,
}

/// The empty probe program, attached while it runs.
struct Probe(Child);

impl Probe {
    fn start(bin: &Path) -> Result<Probe> {
        let mut child = Command::new(bin)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("probe stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "attached" {
            let _ = child.kill();
            bail!("the probe did not attach");
        }
        Ok(Probe(child))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn run(_tools: &Tools, agent_bin: &Path) -> Result<serde_json::Value> {
    let rounds = std::env::var("NETCOST_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = output(Command::new("uname").arg("-r"))?;
    eprintln!(
        "xtask: bench on {cpus} CPUs, kernel {}; {rounds} rounds of {RUN_SECONDS} s per case, without and with the agent alternating",
        kernel.trim()
    );
    let bench = Bench::setup()?;
    let (mut tcp_off, mut tcp_on, mut udp_off, mut udp_on) = (vec![], vec![], vec![], vec![]);
    let mut rss = 0;
    for round in 0..rounds {
        tcp_off.push(bench.tcp()?);
        udp_off.push(bench.udp()?);
        let agent = Agent::start(agent_bin)?;
        tcp_on.push(bench.tcp()?);
        udp_on.push(bench.udp()?);
        rss = rss.max(agent.rss_kib()?);
        drop(agent);
        eprintln!(
            "xtask: round {}: TCP {:.2} → {:.2} Gbit/s, UDP 64 B {:.0} → {:.0} packets/s",
            round + 1,
            tcp_off[round],
            tcp_on[round],
            udp_off[round],
            udp_on[round]
        );
    }

    // Per-packet cost: kernel BPF statistics, on only for this phase. First an empty program on
    // the same traffic (what the statistics charge for any program here), then the agent's.
    let mut per_packet = Vec::new();
    let mut drain = (0.0, 0.0);
    for (case, udp) in [("TCP bulk", false), ("UDP 64 B", true)] {
        let traffic = || {
            if udp {
                bench.udp().map(drop)
            } else {
                bench.tcp().map(drop)
            }
        };
        let probe = Probe::start(&agent_bin.with_file_name("netcost-bench-probe"))?;
        let (baseline_ns, baseline_runs) = {
            let _stats = StatsGuard::enable()?;
            let before = prog_stats("netcost_probe")?;
            traffic()?;
            let after = prog_stats("netcost_probe")?;
            (after.0 - before.0, after.1 - before.1)
        };
        drop(probe);
        let agent = Agent::start(agent_bin)?;
        let packets_before = agent.metric("netcost_network_packets_total").unwrap_or(0.0);
        let (ns, runs) = {
            let _stats = StatsGuard::enable()?;
            let before = [
                prog_stats("netcost_egress")?,
                prog_stats("netcost_ingress")?,
            ];
            traffic()?;
            let after = [
                prog_stats("netcost_egress")?,
                prog_stats("netcost_ingress")?,
            ];
            (
                [after[0].0 - before[0].0, after[1].0 - before[1].0],
                [after[0].1 - before[0].1, after[1].1 - before[1].1],
            )
        };
        std::thread::sleep(Duration::from_millis(2500));
        let wire_packets =
            agent.metric("netcost_network_packets_total").unwrap_or(0.0) - packets_before;
        rss = rss.max(agent.rss_kib()?);
        drain.0 += agent
            .metric("netcost_drain_duration_seconds_sum")
            .unwrap_or(0.0);
        drain.1 += agent
            .metric("netcost_drain_duration_seconds_count")
            .unwrap_or(0.0);
        drop(agent);
        per_packet.push(PerPacket {
            case,
            baseline: baseline_ns as f64 / baseline_runs.max(1) as f64,
            egress: ns[0] as f64 / runs[0].max(1) as f64,
            ingress: ns[1] as f64 / runs[1].max(1) as f64,
            runs: runs[0] + runs[1],
            total_ns: (ns[0] + ns[1]) as f64,
            wire_packets,
        });
    }
    drop(bench);

    let (t0, t1, u0, u1) = (mean(&tcp_off), mean(&tcp_on), mean(&udp_off), mean(&udp_on));
    if rounds > 0 {
        println!("\n| measure | without agent | with agent | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| TCP throughput, veth pair (iperf3, Gbit/s) | {t0:.2} | {t1:.2} | {:.1} % |",
            t1 / t0 * 100.0
        );
        println!(
        "| UDP 64-byte packet rate (iperf3, packets/s received) | {u0:.0} | {u1:.0} | {:.1} % |",
        u1 / u0 * 100.0
    );
    }
    println!("\n| traffic | empty program, ns/run | netcost_egress, ns/run | netcost_ingress, ns/run | net of the empty program, ns/run | runs | wire packets counted | net ns per wire packet |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &per_packet {
        let net_total = p.total_ns - p.baseline * p.runs as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.1} |",
            p.case,
            p.baseline,
            p.egress,
            p.ingress,
            net_total / p.runs as f64,
            p.runs,
            p.wire_packets,
            net_total / p.wire_packets.max(1.0),
        );
    }
    println!("\n| agent | value |\n|---|---|");
    println!(
        "| resident memory (max VmRSS) | {:.1} MiB |",
        rss as f64 / 1024.0
    );
    if drain.1 > 0.0 {
        println!("| mean drain time | {:.2} ms |", drain.0 / drain.1 * 1000.0);
    }
    let ratios = |off: &[f64], on: &[f64]| -> serde_json::Value {
        let mut r: Vec<f64> = off.iter().zip(on).map(|(a, b)| b / a * 100.0).collect();
        r.sort_by(f64::total_cmp);
        serde_json::json!({
            "without_agent": off,
            "with_agent": on,
            "ratio_percent": {
                "min": r.first(),
                "median": r.get(r.len() / 2),
                "max": r.last(),
            },
        })
    };
    Ok(serde_json::json!({
        "rounds": rounds,
        "tcp_gbit_per_s": ratios(&tcp_off, &tcp_on),
        "udp_64_byte_packets_per_s": ratios(&udp_off, &udp_on),
        "per_packet": per_packet.iter().map(|p| {
            let net_total = p.total_ns - p.baseline * p.runs as f64;
            serde_json::json!({
                "traffic": p.case,
                "empty_program_ns_per_run": p.baseline,
                "egress_ns_per_run": p.egress,
                "ingress_ns_per_run": p.ingress,
                "runs": p.runs,
                "wire_packets": p.wire_packets,
                "net_ns_per_wire_packet": net_total / p.wire_packets.max(1.0),
            })
        }).collect::<Vec<_>>(),
        "agent_rss_mib": rss as f64 / 1024.0,
        "mean_drain_ms": if drain.1 > 0.0 { drain.0 / drain.1 * 1000.0 } else { 0.0 },
    }))
}
