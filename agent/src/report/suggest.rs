//! Savings suggestions: each rule finds the bytes a change would stop paying for, prices them
//! with the region's prices, subtracts any new hourly cost the change adds, and says what to
//! change. A rule that does not pay (or has no bytes) says nothing; one that was weighed and
//! refused says why in the report's notes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    context::{AgentCost, Context, HOURS_PER_MONTH},
    series::{gib, label, Labels},
    PUBLIC_IPV4_HOURLY,
};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Suggestion {
    /// `prefer_close`, `co_locate`, `gateway_endpoint`, `nat_gateway_per_zone`,
    /// `scrape_inside_vpc`, `agent_scrapes`.
    pub kind: &'static str,
    pub title: String,
    /// The bytes in the window the estimate rests on.
    pub bytes: f64,
    /// Transfer dollars a month the change removes.
    pub monthly_gross: f64,
    /// Dollars a month the change adds (a new gateway, an instance).
    pub monthly_new_cost: f64,
    /// Net: gross minus new cost.
    pub monthly_saving: f64,
    /// The change: YAML or an AWS CLI command.
    pub change: String,
    pub explanation: String,
}

type Rows<'r> = &'r [(Labels, f64, f64)];

/// Every rule, best saving first; `notes` gets the weighed-and-refused ones.
pub fn all(
    cx: &Context,
    traffic: Rows,
    dest: Rows,
    agent: Option<&AgentCost>,
    notes: &mut Vec<String>,
) -> Vec<Suggestion> {
    let mut out = Vec::new();
    prefer_close(cx, dest, &mut out);
    co_locate(cx, dest, &mut out);
    gateway_endpoint(cx, traffic, &mut out, notes);
    nat_per_zone(cx, traffic, &mut out, notes);
    scrape_inside_vpc(cx, dest, &mut out, notes);
    agent_scrapes(cx, agent, &mut out);
    out.retain(|s| s.monthly_saving >= cx.options.min_saving);
    out.sort_by(|a, b| b.monthly_saving.total_cmp(&a.monthly_saving));
    out
}

/// Cross-zone both ways: the sender's zone charges out, the receiver's in.
fn cross_zone_both(cx: &Context) -> f64 {
    cx.prices.cross_zone_out + cx.prices.cross_zone_in
}

/// Service traffic that crosses zones while the Service has a backend in the client's zone.
fn prefer_close(cx: &Context, dest: Rows, out: &mut Vec<Suggestion>) {
    let mut local: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut crossing: BTreeMap<(String, String, String), (f64, BTreeSet<String>)> = BTreeMap::new();
    for (l, b, _) in dest {
        if label(l, "remote_kind") != "service" {
            continue;
        }
        let service = (
            label(l, "remote_namespace").to_owned(),
            label(l, "remote_name").to_owned(),
        );
        let zone = cx.zone(l);
        let remote_zone = label(l, "remote_zone");
        if label(l, "traffic_class") == "same_zone" || (!zone.is_empty() && remote_zone == zone) {
            local.insert((service.0.clone(), service.1.clone(), zone.clone()));
        }
        if label(l, "traffic_class") == "cross_zone" {
            let e = crossing.entry((service.0, service.1, zone)).or_default();
            e.0 += b;
            e.1.insert(cx.owner(l));
        }
    }
    for ((ns, name, zone), (bytes, clients)) in crossing {
        if !local.contains(&(ns.clone(), name.clone(), zone.clone())) {
            continue;
        }
        let gross = cx.monthly(bytes, cross_zone_both(cx));
        let clients: Vec<_> = clients.into_iter().collect();
        out.push(Suggestion {
            kind: "prefer_close",
            title: format!("Keep traffic to Service {ns}/{name} in its zone"),
            bytes,
            monthly_gross: gross,
            monthly_new_cost: 0.0,
            monthly_saving: gross,
            change: format!(
                "kubectl -n {ns} patch service {name} --type merge -p '{{\"spec\":{{\"trafficDistribution\":\"PreferClose\"}}}}'\n\
                 # Kubernetes < 1.31: kubectl -n {ns} annotate service {name} service.kubernetes.io/topology-mode=Auto"
            ),
            explanation: format!(
                "{} went between {} in {zone} and backends of {ns}/{name} in other zones, while {name} has a backend in {zone}. With PreferClose kube-proxy sends to same-zone backends first, so these bytes stop crossing zones: {} × (${}/GB out + ${}/GB in, both sides of a cross-zone transfer are billed), projected to a month. The zone's backends must be able to take the load.",
                gib(bytes), clients.join(", "), gib(bytes), cx.prices.cross_zone_out, cx.prices.cross_zone_in
            ),
        });
    }
}

/// Cross-zone bytes between a workload and a remote pod or address with no Service between.
fn co_locate(cx: &Context, dest: Rows, out: &mut Vec<Suggestion>) {
    let mut pairs: BTreeMap<(String, String), (f64, String)> = BTreeMap::new();
    for (l, b, _) in dest {
        let kind = label(l, "remote_kind");
        let pods = label(l, "owner") == "pod" && matches!(kind, "pod" | "address");
        // The serving side (a `port`) is the other end's pair, or a Service's backend whose
        // clients `prefer_close` already counts: each pair once, from the side that opened it.
        let opened = label(l, "port").is_empty();
        if label(l, "traffic_class") != "cross_zone" || !pods || !opened {
            continue;
        }
        let e = pairs.entry((cx.owner(l), cx.remote(l))).or_default();
        e.0 += b;
        e.1 = label(l, "namespace").to_owned();
    }
    for ((from, to), (bytes, ns)) in pairs {
        let gross = cx.monthly(bytes, cross_zone_both(cx));
        let workload = from.rsplit('/').next().unwrap_or(&from).to_owned();
        out.push(Suggestion {
            kind: "co_locate",
            title: format!("Run {from} in the same zone as {to}"),
            bytes,
            monthly_gross: gross,
            monthly_new_cost: 0.0,
            monthly_saving: gross,
            change: format!(
                "# in the pod template of {workload} (namespace {ns}): prefer the zone of its peer\n\
                 affinity:\n  podAffinity:\n    preferredDuringSchedulingIgnoredDuringExecution:\n    - weight: 100\n      podAffinityTerm:\n        topologyKey: topology.kubernetes.io/zone\n        namespaces: [\"<peer namespace>\"]\n        labelSelector:\n          matchLabels: {{app: <the labels of {to}>}}\n\
                 # (or, for a replicated pair, spread both over the same zones with topologySpreadConstraints and keep each client on its zone's peer)"
            ),
            explanation: format!(
                "{} went between {from} and {to}, in another zone, with no Service between them. Running them in one zone saves {} × (${}/GB out + ${}/GB in), projected to a month.",
                gib(bytes), gib(bytes), cx.prices.cross_zone_out, cx.prices.cross_zone_in
            ),
        });
    }
}

/// The region's own S3 and DynamoDB reached through a NAT gateway.
fn gateway_endpoint(
    cx: &Context,
    traffic: Rows,
    out: &mut Vec<Suggestion>,
    notes: &mut Vec<String>,
) {
    let Some(nat) = cx.prices.nat_gateway_per_gb else {
        notes.push(format!(
            "no NAT gateway price for {}: gateway-endpoint and per-zone NAT suggestions are left out",
            cx.prices.region
        ));
        return;
    };
    let mut by_service: BTreeMap<String, (f64, f64, BTreeSet<String>)> = BTreeMap::new();
    for (l, b, _) in traffic {
        if !through_nat_to_gateway_service(l) {
            continue;
        }
        let hop = match (label(l, "nat_gateway_hop"), label(l, "direction")) {
            ("cross_zone", "egress") => cx.prices.cross_zone_out,
            ("cross_zone", _) => cx.prices.cross_zone_in,
            _ => 0.0,
        };
        let e = by_service
            .entry(label(l, "service").to_owned())
            .or_default();
        e.0 += b;
        e.1 += cx.monthly(*b, nat + hop);
        e.2.insert(cx.owner(l));
    }
    for (service, (bytes, gross, owners)) in by_service {
        let short = service.trim_start_matches("aws-");
        let region = &cx.prices.region;
        out.push(Suggestion {
            kind: "gateway_endpoint",
            title: format!("Reach {short} through a gateway VPC endpoint, not the NAT gateway"),
            bytes,
            monthly_gross: gross,
            monthly_new_cost: 0.0,
            monthly_saving: gross,
            change: format!(
                "aws ec2 create-vpc-endpoint --region {region} --vpc-endpoint-type Gateway \\\n  --vpc-id <VPC_ID> --service-name com.amazonaws.{region}.{short} \\\n  --route-table-ids <route tables of the private subnets>"
            ),
            explanation: format!(
                "{} to {region}'s {short} went through a NAT gateway ({}), which charges ${nat}/GB processed both ways (plus a cross-zone hop when it sits in another zone). A gateway endpoint for {short} is free and takes these bytes off the NAT gateway; in-region transfer to {short} is free.",
                gib(bytes), owners.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
}

fn through_nat_to_gateway_service(l: &Labels) -> bool {
    label(l, "nat_gateway") == "true"
        && label(l, "traffic_class") == "same_region"
        && matches!(label(l, "service"), "aws-s3" | "aws-dynamodb")
}

/// A NAT gateway in another zone than its clients: one in the clients' zone saves the hop.
fn nat_per_zone(cx: &Context, traffic: Rows, out: &mut Vec<Suggestion>, notes: &mut Vec<String>) {
    let Some(nat) = cx.prices.nat_gateway_per_gb else {
        return;
    };
    let hourly = cx.options.nat_gateway_hourly.unwrap_or(nat) + PUBLIC_IPV4_HOURLY;
    let mut by_zone: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (l, b, _) in traffic {
        // Bytes a gateway endpoint would take off the NAT gateway are that suggestion's.
        if label(l, "nat_gateway_hop") != "cross_zone" || through_nat_to_gateway_service(l) {
            continue;
        }
        let price = if label(l, "direction") == "egress" {
            cx.prices.cross_zone_out
        } else {
            cx.prices.cross_zone_in
        };
        let e = by_zone.entry(cx.zone(l)).or_default();
        e.0 += b;
        e.1 += cx.monthly(*b, price);
    }
    for (zone, (bytes, gross)) in by_zone {
        let new_cost = hourly * HOURS_PER_MONTH;
        let zone = if zone.is_empty() {
            "the clients' zone".to_owned()
        } else {
            zone
        };
        if gross - new_cost < cx.options.min_saving {
            notes.push(format!(
                "a NAT gateway in {zone}: its cross-zone hop costs ${gross:.2}/month ({}), less than a new gateway's ${new_cost:.2}/month: keep the shared one",
                gib(bytes)
            ));
            continue;
        }
        out.push(Suggestion {
            kind: "nat_gateway_per_zone",
            title: format!("Give {zone} its own NAT gateway"),
            bytes,
            monthly_gross: gross,
            monthly_new_cost: new_cost,
            monthly_saving: gross - new_cost,
            change: format!(
                "aws ec2 allocate-address --domain vpc\n\
                 aws ec2 create-nat-gateway --subnet-id <a public subnet in {zone}> --allocation-id <eipalloc from above>\n\
                 aws ec2 replace-route --route-table-id <route table of {zone}'s private subnets> \\\n  --destination-cidr-block 0.0.0.0/0 --nat-gateway-id <the new gateway>"
            ),
            explanation: format!(
                "{} from {zone} went to a NAT gateway in another zone: a cross-zone hop at ${}/GB out and ${}/GB in, ${gross:.2}/month. A gateway in {zone} costs ${:.3}/hour with its public IPv4 (${new_cost:.2}/month); its processing charge per GB is the same as the shared one's.",
                gib(bytes), cx.prices.cross_zone_out, cx.prices.cross_zone_in, hourly
            ),
        });
    }
}

/// Exporters scraped from the internet (a serving port with internet egress) against a
/// scraper inside the VPC.
fn scrape_inside_vpc(cx: &Context, dest: Rows, out: &mut Vec<Suggestion>, notes: &mut Vec<String>) {
    let mut exporters: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (l, b, _) in dest {
        let port = label(l, "port");
        let served = !port.is_empty() && !cx.is_agent(l);
        if served && label(l, "traffic_class") == "internet" && label(l, "direction") == "egress" {
            *exporters.entry((cx.owner(l), port.to_owned())).or_default() += b;
        }
    }
    if exporters.is_empty() {
        return;
    }
    let bytes: f64 = exporters.values().sum();
    let egress = cx.monthly(bytes, cx.prices.internet_out);
    // Inside the VPC the scrapes may cross a zone: counted at the cross-zone price, both sides.
    let inside = cx.monthly(bytes, cross_zone_both(cx));
    let new_cost = cx.options.scraper_hourly * HOURS_PER_MONTH;
    let n = exporters.len() as f64;
    let per_exporter = (egress - inside) / n;
    let break_even = if per_exporter > 0.0 {
        (new_cost / per_exporter).ceil()
    } else {
        f64::INFINITY
    };
    let list: Vec<String> = exporters.keys().map(|(o, p)| format!("{o}:{p}")).collect();
    let net = egress - inside - new_cost;
    if net < cx.options.min_saving {
        notes.push(format!(
            "{} exporter(s) scraped from the internet ({}) cost ${egress:.2}/month in egress; an in-VPC scraper (${new_cost:.2}/month) pays off from about {break_even} such exporters",
            exporters.len(), list.join(", ")
        ));
        return;
    }
    out.push(Suggestion {
        kind: "scrape_inside_vpc",
        title: format!("Scrape {} exporter(s) from inside the VPC", exporters.len()),
        bytes,
        monthly_gross: egress,
        monthly_new_cost: new_cost + inside,
        monthly_saving: net,
        change: "# prometheus.yml of a scraper in the VPC (e.g. `prometheus --enable-feature=agent` in\n\
                 # the cluster): scrape these targets there, send only the samples out\n\
                 remote_write:\n  - url: <your metrics backend>"
            .into(),
        explanation: format!(
            "{} served from {} went to the internet at ${}/GB: ${egress:.2}/month. A scraper inside the VPC on an instance at ${}/hour costs ${new_cost:.2}/month, plus at most ${inside:.2}/month if every scrape crossed a zone; it pays off from {break_even} exporters of this size (N × bytes per scrape × scrapes per hour × $/GB against the instance). Its remote-write stream out is not counted here.",
            gib(bytes), list.join(", "), cx.prices.internet_out, cx.options.scraper_hourly
        ),
    });
}

/// The agents' own `/metrics` answers, when their scraper is across a zone or on the internet.
fn agent_scrapes(cx: &Context, agent: Option<&AgentCost>, out: &mut Vec<Suggestion>) {
    let Some(agent) = agent else {
        return;
    };
    for row in &agent.by_class {
        let per_gb = match row.class.as_str() {
            "cross_zone" => cross_zone_both(cx),
            "internet" => cx.prices.internet_out,
            "cross_region" => cx.prices.inter_region_out,
            _ => continue,
        };
        let gross = cx.monthly(row.money.bytes, per_gb);
        out.push(Suggestion {
            kind: "agent_scrapes",
            title: format!("Scrape netcost from its own zone ({} now)", row.class),
            bytes: row.money.bytes,
            monthly_gross: gross,
            monthly_new_cost: 0.0,
            monthly_saving: gross,
            change: "# scrape each node from a scraper in its zone, or less often:\n\
                     # ServiceMonitor/PodMonitor: interval: 60s (the agent drains every 5 s; totals are exact at any interval)"
                .into(),
            explanation: format!(
                "each /metrics answer is {:.0} bytes, {:.0} scrapes an hour; {} of them went to a scraper across {} at ${per_gb}/GB.",
                agent.bytes_per_scrape, agent.scrapes_per_hour, gib(row.money.bytes), row.class
            ),
        });
    }
}
