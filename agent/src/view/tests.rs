use super::*;
use crate::report::parse_exposition;

const FIRST: &str = r#"# TYPE netcost_network_bytes_total counter
netcost_network_bytes_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="cross_zone",direction="egress"} 1000
netcost_network_bytes_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="internet",direction="ingress"} 500
netcost_network_bytes_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="same_zone",direction="egress"} 0
netcost_network_bytes_total{owner="node",traffic_class="internet",direction="egress"} 70
netcost_network_cost_dollars_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="cross_zone",direction="egress"} 0.5
netcost_destination_bytes_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="cross_zone",direction="egress",remote_kind="service",remote_namespace="shop",remote_name="db",remote_zone="us-east-1b"} 900
netcost_destination_bytes_total{owner="pod",namespace="shop",pod="cart-1",workload_kind="Deployment",workload="cart",pod_uid="u1",traffic_class="cross_zone",direction="egress",remote_kind="other"} 100
netcost_drain_duration_seconds_count 10
netcost_drain_duration_seconds_sum 0.02
netcost_drain_interval_seconds 5
netcost_map_entries{map="flows"} 12
netcost_map_capacity{map="flows"} 65536
netcost_start_info{maps="adopted",totals="restored",pins="pinned"} 1
"#;

fn samples(text: &str) -> snapshot::Samples {
    parse_exposition("test", text).unwrap()
}

#[test]
fn a_snapshot_has_a_row_per_owner_with_its_cells_destinations_and_health() {
    let s = build(&samples(FIRST), None);
    assert_eq!(s.rows.len(), 2);
    let pod = s.rows.iter().find(|r| r.owner == "pod").unwrap();
    assert_eq!(pod.name(), "shop/cart-1");
    assert_eq!(pod.workload, "Deployment/cart");
    assert_eq!(pod.bytes[&("cross_zone".into(), "egress".into())], 1000.0);
    assert_eq!(pod.dollars, 0.5);
    assert_eq!(pod.destinations[0].remote, "service shop/db (us-east-1b)");
    assert_eq!(pod.destinations[1].remote, "(all other)");
    // Only cells with bytes are columns.
    assert_eq!(
        s.cells,
        [
            ("cross_zone".to_string(), "egress".to_string()),
            ("internet".into(), "egress".into()),
            ("internet".into(), "ingress".into())
        ]
    );
    let h = &s.health;
    assert_eq!((h.drains, h.drain_interval), (10.0, Some(5.0)));
    assert!((h.drain_seconds - 0.002).abs() < 1e-12);
    assert!(!h.priced);
    let line = format::health_line(h);
    assert!(line.contains("unpriced: pass --region"), "{line}");
    assert!(line.contains("flows 12/65536"), "{line}");
    assert!(line.contains("maps adopted, totals restored"), "{line}");
}

#[test]
fn rates_come_from_the_look_before() {
    let first = build(&samples(FIRST), None);
    let second_text = FIRST
        .replace("direction=\"egress\"} 1000", "direction=\"egress\"} 6000")
        .replace("seconds_count 10", "seconds_count 11")
        .replace("seconds_sum 0.02", "seconds_sum 0.025")
        .replace("} 0.5", "} 1.5");
    let second = build(&samples(&second_text), Some((&first, 5.0)));
    let pod = second.rows.iter().find(|r| r.owner == "pod").unwrap();
    assert_eq!(pod.rate_out, 1000.0);
    assert_eq!(pod.rate_in, 0.0);
    assert!((pod.dollars_per_hour - 720.0).abs() < 1e-9);
    assert!((second.health.drain_seconds - 0.005).abs() < 1e-12);
}

#[test]
fn the_plain_snapshot_has_exact_bytes_per_cell() {
    let s = build(&samples(FIRST), None);
    let text = plain::render(&s, 5);
    let header = text.lines().nth(1).unwrap();
    assert!(header.contains("cross_zone egress"), "{text}");
    let row = text.lines().find(|l| l.starts_with("shop/cart-1")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..5],
        ["Deployment/cart", "1000", "0", "500"],
        "{text}"
    );
    assert!(text.contains("top destinations of shop/cart-1:"), "{text}");
    assert!(text
        .lines()
        .next()
        .unwrap()
        .contains("drains 10 every 5.0 s"));
}

#[test]
fn arguments_are_checked() {
    let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
    let o = parse(&["--once", "--after", "10s", "--metrics", "http://x/metrics"]).unwrap();
    assert_eq!((o.once, o.after.as_secs()), (true, 10));
    for (args, needle) in [
        (&["--after", "soon"][..], "not a duration"),
        (&["--what"], "unknown argument"),
        (&["--metrics"], "needs a value"),
    ] {
        let e = parse(args).unwrap_err().to_string();
        assert!(e.contains(needle), "{args:?}: {e}");
    }
}
