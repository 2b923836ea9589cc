//! Comparing the agent's per-pod figures with the meters' wire bytes.

use crate::{
    agent::Samples,
    simnode::{Family, SimNode, CLASSES, DIRECTIONS},
};
use anyhow::Result;

/// Within this relative error of the truth (the bar: 0.5 %).
pub const TOLERANCE: f64 = 0.005;

/// A transfer: pod name, class of the remote, address family, `nct-traffic` mode.
pub type Transfer<'a> = (&'a str, &'a str, Family, &'a [&'a str]);

/// Known volumes over TCP and UDP, IPv4 and IPv6, both directions, for every kind of pod; each
/// pod leaves some classes without traffic, which must stay at exactly zero.
pub const PLAN: &[Transfer] = &[
    ("pod1", "same_zone", Family::V4, &["send", "6000000"]),
    ("pod1", "same_zone", Family::V6, &["recv", "3000000"]),
    ("pod1", "internet", Family::V6, &["send", "5000000"]),
    ("pod1", "internet", Family::V4, &["udp", "1500", "1200"]),
    ("pod2", "cross_zone", Family::V4, &["send", "4000000"]),
    ("pod2", "cross_zone", Family::V6, &["recv", "4000000"]),
    ("pod2", "cross_region", Family::V6, &["udp", "1000", "800"]),
    ("pod2", "cross_region", Family::V4, &["recv", "3000000"]),
    ("hostpod", "cross_zone", Family::V4, &["send", "5000000"]),
    ("hostpod", "same_zone", Family::V6, &["recv", "2000000"]),
    ("hostpod", "internet", Family::V6, &["udp", "500", "1400"]),
];

/// What a comparison found: a table for the log and the failed cells.
#[derive(Debug, Default)]
pub struct Comparison {
    pub report: Vec<String>,
    pub failures: Vec<String>,
}

/// Compares every pod × class × direction cell with the meters. `selector(pod name)` gives the
/// labels that pick the pod's series (e.g. its UID, or namespace and name); `active(pod, class)`
/// says whether traffic was sent (cells without traffic must be exactly zero in both).
pub fn compare_with_meters(
    node: &SimNode,
    samples: &Samples,
    selector: &dyn Fn(&str) -> Vec<(String, String)>,
    active: &dyn Fn(&str, &str) -> bool,
) -> Result<Comparison> {
    compare_classes(node, samples, selector, active, &CLASSES)
}

/// The same for a node metered with other `classes` (e.g. with `unplaced` among them); of
/// `unplaced` and `unknown`, those not metered must be exactly zero.
pub fn compare_classes(
    node: &SimNode,
    samples: &Samples,
    selector: &dyn Fn(&str) -> Vec<(String, String)>,
    active: &dyn Fn(&str, &str) -> bool,
    classes: &[&str],
) -> Result<Comparison> {
    let mut c = Comparison::default();
    c.report.push(format!(
        "{:<8} {:<13} {:<8} {:>12} {:>12} {:>9}",
        "pod", "class", "dir", "truth", "netcost", "error"
    ));
    for pod in &node.pods {
        let truth = pod.truth()?;
        let labels = selector(&pod.name);
        let value = |class: &str, direction: &str| {
            let mut want: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            want.push(("owner", "pod"));
            want.push(("traffic_class", class));
            want.push(("direction", direction));
            samples.value("netcost_network_bytes_total", &want)
        };
        for &class in classes {
            let has_traffic = active(&pod.name, class);
            let truth_of = |direction: &str| {
                truth
                    .get(&(class.to_owned(), direction.to_owned()))
                    .copied()
                    .unwrap_or(0) as f64
            };
            // The plan's volume shows in the pair of directions: the side that only acknowledges
            // a one-way transfer can carry fewer than 1,000 bytes (ACKs coalesce differently
            // from run to run), but it must carry some.
            let pair: f64 = DIRECTIONS.iter().map(|d| truth_of(d)).sum();
            for direction in DIRECTIONS {
                let t = truth_of(direction);
                let Some(got) = value(class, direction) else {
                    c.failures
                        .push(format!("{} {class} {direction}: no series", pod.name));
                    continue;
                };
                let err = if t > 0.0 { (got - t) / t } else { 0.0 };
                c.report.push(format!(
                    "{:<8} {:<13} {:<8} {:>12} {:>12} {:>+8.4}%",
                    pod.name,
                    class,
                    direction,
                    t,
                    got,
                    err * 100.0
                ));
                if has_traffic {
                    if t == 0.0 || pair < 1_000.0 || err.abs() > TOLERANCE {
                        c.failures.push(format!(
                            "{} {class} {direction}: netcost {got} vs truth {t} ({:+.3}%)",
                            pod.name,
                            err * 100.0
                        ));
                    }
                } else if t != 0.0 || got != 0.0 {
                    c.failures.push(format!(
                        "{} {class} {direction}: expected no traffic, netcost {got}, truth {t}",
                        pod.name
                    ));
                }
            }
        }
        for class in ["unplaced", "unknown"]
            .into_iter()
            .filter(|c| !classes.contains(c))
        {
            for direction in DIRECTIONS {
                let got = value(class, direction).unwrap_or(-1.0);
                if got != 0.0 {
                    c.failures
                        .push(format!("{} {class} {direction} = {got}, want 0", pod.name));
                }
            }
        }
    }
    let lost = samples.sum("netcost_lost_bytes_total", &[]);
    if lost != 0.0 {
        c.failures.push(format!("lost bytes {lost}"));
    }
    Ok(c)
}

/// Runs a plan of transfers.
pub fn run_plan(node: &SimNode, plan: &[Transfer]) -> Result<()> {
    for (pod, class, family, mode) in plan {
        node.transfer(pod, class, *family, mode)?;
    }
    Ok(())
}
