use super::*;

const GIB: f64 = (1u64 << 30) as f64;
/// A one-hour window: a month is 730 of them.
const WINDOW: f64 = 3600.0;

fn labels(pairs: &[(&str, &str)]) -> series::Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An observation with one node in us-east-1a.
fn observed() -> Observed {
    let mut o = Observed {
        window_seconds: WINDOW,
        ..Observed::default()
    };
    o.gauges.insert(
        "netcost_node_info".into(),
        vec![Series {
            labels: labels(&[
                ("node", "node-a"),
                ("zone", "us-east-1a"),
                ("region", "us-east-1"),
            ]),
            value: 1.0,
        }],
    );
    o
}

fn pod(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("owner", "pod"),
        ("namespace", "shop"),
        ("pod", "cart-1"),
        ("workload_kind", "Deployment"),
        ("workload", "cart"),
    ];
    v.extend_from_slice(extra);
    v
}

/// Adds a traffic series and its dollars (priced as given), and the same bytes as a
/// destination series when `remote` is given.
fn add(o: &mut Observed, family: &str, l: &[(&str, &str)], bytes: f64, dollars: f64) {
    let (b, d) = match family {
        "traffic" => (
            "netcost_network_bytes_total",
            "netcost_network_cost_dollars_total",
        ),
        _ => (
            "netcost_destination_bytes_total",
            "netcost_destination_cost_dollars_total",
        ),
    };
    for (name, value) in [(b, bytes), (d, dollars)] {
        o.counters.entry(name.into()).or_default().push(Series {
            labels: labels(l),
            value,
        });
    }
}

fn options() -> ReportOptions {
    let mut o = parse_args(["--metrics".to_string(), "http://x/metrics".into()]).unwrap();
    o.min_saving = 1.0;
    o
}

fn build(o: &Observed) -> Report {
    let options = options();
    let prices = prices_for(&options, o).unwrap();
    Report::build(o, &prices, &options).unwrap()
}

fn only(r: &Report, kind: &str) -> Vec<Suggestion> {
    r.suggestions
        .iter()
        .filter(|s| s.kind == kind)
        .cloned()
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn service_traffic_across_zones_with_a_local_backend_suggests_prefer_close() {
    let mut o = observed();
    add(
        &mut o,
        "traffic",
        &pod(&[("traffic_class", "cross_zone"), ("direction", "egress")]),
        10.0 * GIB,
        0.1,
    );
    let svc = |class, zone| {
        pod(&[
            ("traffic_class", class),
            ("direction", "egress"),
            ("remote_kind", "service"),
            ("remote_namespace", "shop"),
            ("remote_name", "db"),
            ("remote_zone", zone),
        ])
    };
    add(
        &mut o,
        "dest",
        &svc("cross_zone", "us-east-1b"),
        10.0 * GIB,
        0.1,
    );
    let none = build(&o);
    assert!(
        only(&none, "prefer_close").is_empty(),
        "no backend in our zone: nothing to prefer"
    );
    add(
        &mut o,
        "dest",
        &svc("same_zone", "us-east-1a"),
        4.0 * GIB,
        0.0,
    );
    let r = build(&o);
    let s = only(&r, "prefer_close");
    assert_eq!(s.len(), 1, "{:#?}", r.suggestions);
    assert_eq!(s[0].bytes, 10.0 * GIB);
    // 10 GiB an hour, 730 hours, $0.01 out + $0.01 in per GB (GB as the agent prices: 2^30).
    assert!(
        close(s[0].monthly_saving, 10.0 * 730.0 * 0.02),
        "{}",
        s[0].monthly_saving
    );
    assert!(s[0]
        .change
        .contains("\"trafficDistribution\":\"PreferClose\""));
    assert!(s[0].change.contains("topology-mode=Auto"));
}

#[test]
fn a_cross_zone_pair_without_a_service_suggests_co_location_only_above_the_minimum() {
    let mut o = observed();
    let l = pod(&[
        ("traffic_class", "cross_zone"),
        ("direction", "ingress"),
        ("remote_kind", "address"),
        ("remote_address", "10.0.16.10"),
        ("remote_zone", "us-east-1b"),
    ]);
    add(&mut o, "traffic", &l[..7], 0.01 * GIB, 0.0001);
    add(&mut o, "dest", &l, 0.01 * GIB, 0.0001);
    // 0.01 GiB/h × 730 × $0.02 = $0.146/month: under $1.
    assert!(only(&build(&o), "co_locate").is_empty());
    o.counters.clear();
    add(&mut o, "traffic", &l[..7], 2.0 * GIB, 0.02);
    add(&mut o, "dest", &l, 2.0 * GIB, 0.02);
    let s = only(&build(&o), "co_locate");
    assert_eq!(s.len(), 1);
    assert!(close(s[0].monthly_saving, 2.0 * 730.0 * 0.02));
    assert!(
        s[0].title.contains("10.0.16.10 (us-east-1b)"),
        "{}",
        s[0].title
    );
}

#[test]
fn s3_through_the_nat_gateway_suggests_a_gateway_endpoint_at_the_nat_price() {
    let mut o = observed();
    let s3 = |dir, hop| {
        pod(&[
            ("traffic_class", "same_region"),
            ("direction", dir),
            ("service", "aws-s3"),
            ("nat_gateway", "true"),
            ("nat_gateway_hop", hop),
        ])
    };
    add(
        &mut o,
        "traffic",
        &s3("egress", "cross_zone"),
        1.0 * GIB,
        0.055,
    );
    add(
        &mut o,
        "traffic",
        &s3("ingress", "cross_zone"),
        3.0 * GIB,
        0.165,
    );
    let r = build(&o);
    let s = only(&r, "gateway_endpoint");
    assert_eq!(s.len(), 1);
    // NAT processing $0.045 both ways plus the $0.01 hop each way.
    assert!(
        close(s[0].monthly_saving, 4.0 * 730.0 * 0.055),
        "{}",
        s[0].monthly_saving
    );
    assert!(s[0].change.contains("com.amazonaws.us-east-1.s3"));
    // Those bytes are the endpoint's: no per-zone NAT suggestion is made of them.
    assert!(only(&r, "nat_gateway_per_zone").is_empty());
}

#[test]
fn a_nat_gateway_in_another_zone_pays_for_its_own_only_with_enough_bytes() {
    let mut o = observed();
    let l = pod(&[
        ("traffic_class", "internet"),
        ("direction", "egress"),
        ("nat_gateway", "true"),
        ("nat_gateway_hop", "cross_zone"),
    ]);
    // 1 GiB/h: hop $7.30/month < a gateway's (0.045 + 0.005) × 730 = $36.50.
    add(&mut o, "traffic", &l, 1.0 * GIB, 0.145);
    let r = build(&o);
    assert!(only(&r, "nat_gateway_per_zone").is_empty());
    assert!(
        r.notes.iter().any(|n| n.contains("keep the shared one")),
        "{:?}",
        r.notes
    );
    o.counters.clear();
    add(&mut o, "traffic", &l, 10.0 * GIB, 1.45);
    let s = only(&build(&o), "nat_gateway_per_zone");
    assert_eq!(s.len(), 1);
    assert!(close(s[0].monthly_gross, 10.0 * 730.0 * 0.01));
    assert!(close(s[0].monthly_new_cost, 0.05 * 730.0));
    assert!(close(s[0].monthly_saving, 73.0 - 36.5));
    assert!(s[0].title.contains("us-east-1a"));
}

#[test]
fn an_exporter_scraped_from_the_internet_is_weighed_against_a_scraper_instance() {
    let mut o = observed();
    let l = pod(&[
        ("traffic_class", "internet"),
        ("direction", "egress"),
        ("remote_kind", "external"),
        ("remote_address", "203.0.113.0/24"),
        ("port", "9100"),
    ]);
    // 0.01 GiB/h: $0.657/month of egress, under the instance's $15.18.
    add(&mut o, "traffic", &l[..7], 0.01 * GIB, 0.0009);
    add(&mut o, "dest", &l, 0.01 * GIB, 0.0009);
    let r = build(&o);
    assert!(only(&r, "scrape_inside_vpc").is_empty());
    assert!(
        r.notes.iter().any(|n| n.contains("pays off from about")),
        "{:?}",
        r.notes
    );
    o.counters.clear();
    add(&mut o, "traffic", &l[..7], 1.0 * GIB, 0.09);
    add(&mut o, "dest", &l, 1.0 * GIB, 0.09);
    let s = only(&build(&o), "scrape_inside_vpc");
    assert_eq!(s.len(), 1);
    let egress = 730.0 * 0.09;
    let inside = 730.0 * 0.02;
    let instance = 0.0208 * 730.0;
    assert!(close(s[0].monthly_saving, egress - inside - instance));
    // One exporter saves egress − inside a month: break-even at ⌈instance / that⌉.
    let n = (instance / (egress - inside)).ceil();
    assert!(
        s[0].explanation
            .contains(&format!("pays off from {n} exporters")),
        "{}",
        s[0].explanation
    );
}

#[test]
fn the_agents_own_scrapes_are_reported_and_priced_when_they_cross_a_zone() {
    let mut o = observed();
    for (name, v) in [
        ("netcost_scrape_responses_total", 240.0),
        ("netcost_scrape_response_bytes_total", 240.0 * 50_000.0),
    ] {
        o.counters.insert(
            name.into(),
            vec![Series {
                labels: labels(&[]),
                value: v,
            }],
        );
    }
    let l = [
        ("owner", "node"),
        ("traffic_class", "cross_zone"),
        ("direction", "egress"),
        ("remote_kind", "address"),
        ("remote_address", "10.0.16.9"),
        ("port", "3001"),
    ];
    add(&mut o, "traffic", &l[..3], 12e6, 0.0001);
    add(&mut o, "dest", &l, 12e6, 0.0001);
    let r = build(&o);
    let a = r.agent.as_ref().unwrap();
    assert_eq!((a.scrapes_per_hour, a.bytes_per_scrape), (240.0, 50_000.0));
    let s = only(&r, "agent_scrapes");
    assert!(s.is_empty(), "$0.13/month is under the minimum");
    let mut opts = options();
    opts.min_saving = 0.0;
    let prices = prices_for(&opts, &o).unwrap();
    let r = Report::build(&o, &prices, &opts).unwrap();
    let s: Vec<_> = r
        .suggestions
        .iter()
        .filter(|s| s.kind == "agent_scrapes")
        .collect();
    assert_eq!(s.len(), 1);
    assert!(close(s[0].monthly_saving, 12e6 / GIB * 730.0 * 0.02));
    // The node's scrapes are not a pod pair to co-locate.
    assert!(only(&r, "co_locate").is_empty());
}

#[test]
fn costs_group_by_workload_or_by_a_pod_label() {
    let mut o = observed();
    add(
        &mut o,
        "traffic",
        &pod(&[("traffic_class", "internet"), ("direction", "egress")]),
        GIB,
        0.09,
    );
    add(
        &mut o,
        "traffic",
        &[
            ("owner", "node"),
            ("traffic_class", "internet"),
            ("direction", "egress"),
        ],
        GIB,
        0.09,
    );
    let r = build(&o);
    let groups: Vec<_> = r.costs.iter().map(|c| c.group.as_str()).collect();
    assert_eq!(groups, ["node node-a", "shop/cart"]);
    assert!(close(r.total.monthly, 0.18 * 730.0));
    o.gauges.insert(
        "kube_pod_labels".into(),
        vec![Series {
            labels: labels(&[
                ("namespace", "shop"),
                ("pod", "cart-1"),
                ("label_team", "payments"),
            ]),
            value: 1.0,
        }],
    );
    let mut opts = options();
    opts.by_label = Some("team".into());
    let prices = prices_for(&opts, &o).unwrap();
    let r = Report::build(&o, &prices, &opts).unwrap();
    let groups: Vec<_> = r.costs.iter().map(|c| c.group.as_str()).collect();
    assert_eq!(groups, ["(none)", "payments"]);
    for format in [
        OutputFormat::Table,
        OutputFormat::Markdown,
        OutputFormat::Json,
    ] {
        assert!(render(&r, format).contains("payments"));
    }
}

#[test]
fn arguments_and_missing_facts_are_refused_by_name() {
    let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
    let o = parse(&[
        "--prometheus",
        "http://p:9090",
        "--since",
        "7d",
        "--by",
        "label:team",
    ])
    .unwrap();
    assert_eq!(
        o.source,
        SourceSpec::Prometheus {
            url: "http://p:9090".into(),
            since: std::time::Duration::from_secs(7 * 86400),
            at: None
        }
    );
    for (args, needle) in [
        (&["--since", "7d"][..], "one of --prometheus"),
        (&["--metrics", "u", "--over", "soon"], "not a duration"),
        (&["--metrics", "u", "--by", "team"], "label:KEY"),
        (&["--metrics", "u", "--format", "xml"], "xml"),
        (&["--metrics", "u", "--min-saving", "-1"], "--min-saving"),
        (&["--metrics"], "needs a value"),
    ] {
        let e = parse(args).unwrap_err().to_string();
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    let o = Observed {
        window_seconds: 60.0,
        ..Observed::default()
    };
    let e = prices_for(&options(), &o).unwrap_err().to_string();
    assert!(e.contains("--region"), "{e}");
    let prices = prices_for(
        &{
            let mut x = options();
            x.region = Some("us-east-1".into());
            x
        },
        &o,
    )
    .unwrap();
    assert!(matches!(
        Report::build(&o, &prices, &options()),
        Err(ReportError::Empty)
    ));
}
