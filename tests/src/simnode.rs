//! A simulated Kubernetes node on AWS, built from network namespaces:
//!
//! ```text
//!  nct-pod1 ─┐ (veth)                       ┌─ nct-rsz  10.0.2.10     pod on another node, same zone
//!  nct-pod2 ─┤ br0 10.0.1.1   nct-node      ├─ nct-rxz  10.0.16.10    node in another zone
//!            │  (hostNetwork pod lives here) ── up0 ─ rt-node ─ nct-router ─┼─ nct-rxr 10.1.0.10   another region
//!            │        10.0.0.1                10.0.0.2                      └─ nct-rin  203.0.113.10  the internet
//! ```
//! (and the same in IPv6: fd00:0:1::/64 pods, fd00::/64 uplink, fd00:0:2::, fd00:0:16::, fd00:1:0::,
//! 2001:db8:113:: remotes). Every address exists only inside these namespaces; the root namespace is
//! not touched.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{meter::Filter, meter::Meter, spawn_in, CgroupTree, Netns, Proc};

/// The traffic classes of the agent's metrics that the simulated node produces.
pub const CLASSES: [&str; 4] = ["same_zone", "cross_zone", "cross_region", "internet"];
pub const DIRECTIONS: [&str; 2] = ["egress", "ingress"];

/// (traffic class, netns suffix, IPv4 /24 prefix, IPv6 /64 prefix) of each remote host.
const REMOTES: [(&str, &str, &str, &str); 4] = [
    ("same_zone", "rsz", "10.0.2", "fd00:0:2"),
    ("cross_zone", "rxz", "10.0.16", "fd00:0:16"),
    ("cross_region", "rxr", "10.1.0", "fd00:1:0"),
    ("internet", "rin", "203.0.113", "2001:db8:113"),
];
const NODE_V4: &str = "10.0.0.1";
const NODE_V6: &str = "fd00::1";
const SERVER_PORT: u16 = 5001;

/// The agent's topology for this node: us-east-1a, with the remotes placed as their names say.
pub const TOPOLOGY_YAML: &str = r#"topology:
  region: us-east-1
  zone: us-east-1a
  vpc_cidrs: ["10.0.0.0/16", "fd00::/32"]
  zones:
    - name: us-east-1a
      region: us-east-1
      cidrs: ["10.0.0.0/30", "10.0.1.0/24", "10.0.2.0/24", "fd00::/64", "fd00:0:1::/64", "fd00:0:2::/64"]
    - name: us-east-1b
      region: us-east-1
      cidrs: ["10.0.16.0/24", "fd00:0:16::/64"]
  regions:
    - name: eu-west-1
      cidrs: ["10.1.0.0/24", "fd00:1:0::/64"]
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// What the kernel gives veths: TSO/GSO on, GRO off.
    Default,
    /// TSO, GSO and GRO off on every interface.
    Off,
    /// TSO and GSO off (senders' devices segment), GRO on (receivers merge again).
    GroOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

pub struct Pod {
    pub name: String,
    pub uid: String,
    pub cgroup: PathBuf,
    /// Network namespace its processes run in (the node's for a hostNetwork pod).
    pub netns: String,
    egress: Meter,
    ingress: Meter,
}

impl Pod {
    /// Wire bytes per (traffic class, direction), from the meters.
    pub fn truth(&self) -> Result<BTreeMap<(String, String), u64>> {
        let mut out = BTreeMap::new();
        for (direction, meter) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            for (class, bytes) in meter.read()? {
                out.insert((class, direction.to_owned()), bytes);
            }
        }
        Ok(out)
    }
}

pub struct SimNode {
    // Drop order matters: processes, then namespaces, then cgroups.
    servers: Vec<Proc>,
    namespaces: Vec<Netns>,
    pub pods: Vec<Pod>,
    pub cgroups: CgroupTree,
    traffic_bin: PathBuf,
    /// cgroup of the processes on remote hosts (not a pod of this node).
    remote_cgroup: PathBuf,
}

fn pod_uid(i: u32) -> String {
    format!("1e57c0de-0000-4000-8000-{i:012}")
}

/// Which traffic class the meters count each remote prefix as (IPv4 or IPv6 prefixes).
pub type Classes = Vec<(&'static str, Vec<String>)>;

/// The classes of the standard node: each remote host's /24 and /64 in its class.
pub fn standard_classes() -> Classes {
    REMOTES
        .iter()
        .map(|(class, _, v4, v6)| (*class, vec![format!("{v4}.0/24"), format!("{v6}::/64")]))
        .collect()
}

fn class_filters(
    direction: &str,
    node_ip: bool,
    classes: &Classes,
) -> Vec<(&'static str, Vec<Filter>)> {
    let (remote, local) = if direction == "egress" {
        ("dst", "src")
    } else {
        ("src", "dst")
    };
    classes
        .iter()
        .map(|(class, prefixes)| {
            let filters = prefixes
                .iter()
                .map(|p| {
                    if p.contains(':') {
                        let mut m = format!("match ip6 {remote} {p}");
                        if node_ip {
                            m.push_str(&format!(" match ip6 {local} {NODE_V6}/128"));
                        }
                        ("ipv6", m)
                    } else {
                        let mut m = format!("match ip {remote} {p}");
                        if node_ip {
                            m.push_str(&format!(" match ip {local} {NODE_V4}/32"));
                        }
                        ("ip", m)
                    }
                })
                .collect();
            (*class, filters)
        })
        .collect()
}

impl SimNode {
    /// Builds the node with two pod-network pods (cgroupfs and systemd drivers) and one
    /// hostNetwork pod, starts a traffic server on every remote host.
    pub fn build(traffic_bin: &Path, offloads: Offloads) -> Result<SimNode> {
        SimNode::build_with(traffic_bin, offloads, &[], &standard_classes())
    }

    /// The node with `extra` IPv4 addresses on remote hosts (`(host suffix, address)`, routed
    /// by the router) and meters that count remote prefixes as `classes` say.
    pub fn build_with(
        traffic_bin: &Path,
        offloads: Offloads,
        extra: &[(&str, &str)],
        classes: &Classes,
    ) -> Result<SimNode> {
        let cgroups = CgroupTree::new()?;
        let remote_cgroup = cgroups.create("remote")?;
        let mut node = SimNode {
            servers: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            cgroups,
            traffic_bin: traffic_bin.to_owned(),
            remote_cgroup,
        };
        let ns = Netns::new("node")?;
        ns.sysctl("net.ipv4.ip_forward=1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding=1")?;
        ns.ip("link add br0 type bridge")?;
        ns.ip("addr add 10.0.1.1/24 dev br0")?;
        ns.ip("-6 addr add fd00:0:1::1/64 dev br0 nodad")?;
        ns.ip("link set br0 up")?;
        ns.ip("link add up0 type veth peer name rt-node")?;
        let router = Netns::new("router")?;
        router.sysctl("net.ipv4.ip_forward=1")?;
        router.sysctl("net.ipv6.conf.all.forwarding=1")?;
        ns.ip(&format!("link set rt-node netns {}", router.name))?;
        ns.ip(&format!("addr add {NODE_V4}/30 dev up0"))?;
        ns.ip(&format!("-6 addr add {NODE_V6}/64 dev up0 nodad"))?;
        ns.ip("link set up0 up")?;
        ns.ip("route add default via 10.0.0.2")?;
        ns.ip("-6 route add default via fd00::2")?;
        router.ip("addr add 10.0.0.2/30 dev rt-node")?;
        router.ip("-6 addr add fd00::2/64 dev rt-node nodad")?;
        router.ip("link set rt-node up")?;
        router.ip(&format!("route add 10.0.1.0/24 via {NODE_V4}"))?;
        router.ip(&format!("-6 route add fd00:0:1::/64 via {NODE_V6}"))?;

        for (_, suffix, v4, v6) in REMOTES {
            let host = Netns::new(suffix)?;
            router.ip(&format!("link add rt-{suffix} type veth peer name eth0"))?;
            router.ip(&format!("link set eth0 netns {}", host.name))?;
            router.ip(&format!("addr add {v4}.1/24 dev rt-{suffix}"))?;
            router.ip(&format!("-6 addr add {v6}::1/64 dev rt-{suffix} nodad"))?;
            router.ip(&format!("link set rt-{suffix} up"))?;
            host.ip(&format!("addr add {v4}.10/24 dev eth0"))?;
            host.ip(&format!("-6 addr add {v6}::10/64 dev eth0 nodad"))?;
            host.ip("link set eth0 up")?;
            host.ip(&format!("route add default via {v4}.1"))?;
            host.ip(&format!("-6 route add default via {v6}::1"))?;
            for (_, addr) in extra.iter().filter(|(h, _)| *h == suffix) {
                host.ip(&format!("addr add {addr}/32 dev eth0"))?;
                router.ip(&format!("route add {addr}/32 dev rt-{suffix}"))?;
            }
            let server = node.start_server(
                &node.remote_cgroup.clone(),
                &host.name,
                &format!("[::]:{SERVER_PORT}"),
            )?;
            node.servers.push(server);
            node.namespaces.push(host);
        }

        for (i, driver) in [(1u32, CgroupDriver::Cgroupfs), (2, CgroupDriver::Systemd)] {
            let pod_ns = Netns::new(&format!("pod{i}"))?;
            ns.ip(&format!("link add vp{i} type veth peer name eth0"))?;
            ns.ip(&format!("link set eth0 netns {}", pod_ns.name))?;
            ns.ip(&format!("link set vp{i} master br0"))?;
            ns.ip(&format!("link set vp{i} up"))?;
            pod_ns.ip(&format!("addr add 10.0.1.1{i}/24 dev eth0"))?;
            pod_ns.ip(&format!("-6 addr add fd00:0:1::1{i}/64 dev eth0 nodad"))?;
            pod_ns.ip("link set eth0 up")?;
            pod_ns.ip("route add default via 10.0.1.1")?;
            pod_ns.ip("-6 route add default via fd00:0:1::1")?;
            let egress = Meter::install(
                &pod_ns.name,
                "eth0",
                &class_filters("egress", false, classes),
            )?;
            let ingress = Meter::install(
                &ns.name,
                &format!("vp{i}"),
                &class_filters("ingress", false, classes),
            )?;
            node.add_pod(&format!("pod{i}"), i, driver, &pod_ns.name, egress, ingress)?;
            node.namespaces.push(pod_ns);
        }
        // The hostNetwork pod: the node's namespace and address, its own pod cgroup.
        let egress = Meter::install(&ns.name, "up0", &class_filters("egress", true, classes))?;
        let ingress = Meter::install(
            &router.name,
            "rt-node",
            &class_filters("ingress", true, classes),
        )?;
        let node_ns = ns.name.clone();
        node.add_pod(
            "hostpod",
            3,
            CgroupDriver::Cgroupfs,
            &node_ns,
            egress,
            ingress,
        )?;
        node.namespaces.push(router);
        node.namespaces.push(ns);
        node.set_offloads(offloads)?;
        Ok(node)
    }

    fn start_server(&self, cgroup: &Path, netns: &str, listen: &str) -> Result<Proc> {
        let bin = self.traffic_bin.to_string_lossy().into_owned();
        let mut server = spawn_in(cgroup, Some(netns), &[&bin, "serve", listen], true)?;
        let stdout = server.child().stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("traffic server in {netns} did not start");
        }
        Ok(server)
    }

    /// Starts a traffic server in a pod (its cgroup and netns), listening on `listen`.
    pub fn serve_in_pod(&mut self, pod: &str, listen: &str) -> Result<()> {
        let (cgroup, netns) = {
            let p = self.pod(pod);
            (p.cgroup.clone(), p.netns.clone())
        };
        let server = self.start_server(&cgroup, &netns, listen)?;
        self.servers.push(server);
        Ok(())
    }

    /// One of the node's namespaces by suffix (`node`, `router`, `rsz`, `pod1`…).
    pub fn netns(&self, suffix: &str) -> Result<&Netns> {
        self.namespaces
            .iter()
            .find(|n| n.name.strip_prefix(crate::NETNS_PREFIX) == Some(suffix))
            .with_context(|| format!("no namespace {suffix}"))
    }

    /// Runs `nct-traffic MODE ADDR ARGS…` from `pod` to any address.
    pub fn transfer_to(&self, pod: &str, addr: &str, mode: &[&str]) -> Result<()> {
        let pod = self.pod(pod);
        self.traffic(&pod.cgroup, &pod.netns, addr, mode)
            .with_context(|| format!("{} → {addr} {mode:?}", pod.name))
    }

    /// Runs `nct-traffic MODE ADDR ARGS…` on a remote host (`rin`, `rsz`…), outside every pod.
    pub fn transfer_from_remote(&self, host: &str, addr: &str, mode: &[&str]) -> Result<()> {
        let netns = self.netns(host)?.name.clone();
        self.traffic(&self.remote_cgroup, &netns, addr, mode)
            .with_context(|| format!("{host} → {addr} {mode:?}"))
    }

    fn traffic(&self, cgroup: &Path, netns: &str, addr: &str, mode: &[&str]) -> Result<()> {
        let bin = self.traffic_bin.to_string_lossy().into_owned();
        let mut argv = vec![bin.as_str(), mode[0], addr];
        argv.extend_from_slice(&mode[1..]);
        spawn_in(cgroup, Some(netns), &argv, false)?.finish()
    }

    fn add_pod(
        &mut self,
        name: &str,
        i: u32,
        driver: CgroupDriver,
        netns: &str,
        egress: Meter,
        ingress: Meter,
    ) -> Result<()> {
        let uid = pod_uid(i);
        let relative = match driver {
            CgroupDriver::Cgroupfs => format!("kubepods/besteffort/pod{uid}/c0ffee{i:02}"),
            CgroupDriver::Systemd => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-c0ffee{i:02}.scope",
                uid.replace('-', "_")
            ),
        };
        let cgroup = self.cgroups.create(&relative)?;
        self.pods.push(Pod {
            name: name.to_owned(),
            uid,
            cgroup,
            netns: netns.to_owned(),
            egress,
            ingress,
        });
        Ok(())
    }

    fn set_offloads(&self, offloads: Offloads) -> Result<()> {
        let features: &[&str] = match offloads {
            Offloads::Default => return Ok(()),
            Offloads::Off => &["tso", "off", "gso", "off", "gro", "off"],
            Offloads::GroOnly => &["tso", "off", "gso", "off", "gro", "on"],
        };
        for ns in &self.namespaces {
            let links = ns.exec(&["ip", "-o", "link", "show"])?;
            for dev in links.lines().filter_map(|l| {
                let name = l.split(':').nth(1)?.trim();
                Some(name.split('@').next()?.to_owned())
            }) {
                if dev == "lo" {
                    continue;
                }
                let mut argv = vec!["ethtool", "-K", dev.as_str()];
                argv.extend_from_slice(features);
                ns.exec(&argv)
                    .with_context(|| format!("setting offloads on {dev} in {}", ns.name))?;
            }
        }
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .expect("no such pod")
    }

    /// Runs one transfer from `pod` to the remote host of `class`, in the pod's cgroup and netns.
    /// `mode` is a `nct-traffic` mode: `send BYTES`, `recv BYTES` or `udp COUNT SIZE`.
    pub fn transfer(&self, pod: &str, class: &str, family: Family, mode: &[&str]) -> Result<()> {
        let pod = self.pod(pod);
        let (_, _, v4, v6) = REMOTES
            .iter()
            .find(|r| r.0 == class)
            .context("unknown class")?;
        let addr = match family {
            Family::V4 => format!("{v4}.10:{SERVER_PORT}"),
            Family::V6 => format!("[{v6}::10]:{SERVER_PORT}"),
        };
        let bin = self.traffic_bin.to_string_lossy().into_owned();
        let mut argv = vec![bin.as_str(), mode[0], addr.as_str()];
        argv.extend_from_slice(&mode[1..]);
        spawn_in(&pod.cgroup, Some(&pod.netns), &argv, false)?
            .finish()
            .with_context(|| format!("{} → {class} {family:?} {mode:?}", pod.name))
    }

    /// Remote addresses for many-flow tests: `count` extra IPv4 addresses on the internet host.
    pub fn add_internet_aliases(&self, count: u32) -> Result<Vec<String>> {
        let host = self
            .namespaces
            .iter()
            .find(|n| n.name.ends_with("rin"))
            .context("no internet host")?;
        let mut out = Vec::new();
        for i in 0..count {
            let addr = format!("203.0.113.{}", 100 + i);
            host.ip(&format!("addr add {addr}/32 dev eth0"))?;
            out.push(addr);
        }
        Ok(out)
    }

    /// UDP echo exchange from `pod` to an arbitrary address of a remote host.
    pub fn udp_to(&self, pod: &str, addr: &str, count: u32, size: u32) -> Result<()> {
        let pod = self.pod(pod);
        let bin = self.traffic_bin.to_string_lossy().into_owned();
        let target = format!("{addr}:{SERVER_PORT}");
        let (count, size) = (count.to_string(), size.to_string());
        spawn_in(
            &pod.cgroup,
            Some(&pod.netns),
            &[&bin, "udp", &target, &count, &size],
            false,
        )?
        .finish()
    }
}
