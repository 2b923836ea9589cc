use super::*;
use crate::{
    config::PriceOverrides as Overrides,
    vocab::{Destination, Direction, Route, TrafficClass},
};

#[test]
fn the_built_in_table_is_valid_and_sourced() {
    let t = PriceTable::parse("built-in", BUILT_IN).unwrap();
    assert_eq!(t.regions.len(), 33);
    assert_eq!(t.gigabyte_bytes, GIB);
    let use1 = &t.regions["us-east-1"];
    assert_eq!(use1.internet_out[0].usd, 0.09);
    assert_eq!(use1.inter_region_to["us-east-2"], 0.01);
    assert_eq!(use1.nat_gateway_per_gb, Some(0.045));
    assert_eq!(t.regions["af-south-1"].nat_gateway_per_gb, None);
    assert!(t
        .regions
        .values()
        .all(|r| r.source.contains_key("transfer")));
}

fn dest(class: TrafficClass, route: Route) -> Destination {
    Destination {
        class,
        service: None,
        route,
    }
}

#[test]
fn prices_follow_aws_rules() {
    let t = PriceTable::built_in();
    let p = Prices::for_region(&t, "us-east-1", 0, &Overrides::default()).unwrap();
    let e = Direction::Egress;
    let i = Direction::Ingress;
    let direct = Route::Direct;
    assert_eq!(
        p.per_gb(&dest(TrafficClass::CrossZone, direct), e, None),
        Some(0.01)
    );
    assert_eq!(
        p.per_gb(&dest(TrafficClass::CrossZone, direct), i, None),
        Some(0.01)
    );
    assert_eq!(
        p.per_gb(&dest(TrafficClass::Internet, direct), e, None),
        Some(0.09)
    );
    assert_eq!(
        p.per_gb(&dest(TrafficClass::Internet, direct), i, None),
        Some(0.0)
    );
    let cr = dest(TrafficClass::CrossRegion, direct);
    assert_eq!(p.per_gb(&cr, e, Some("us-east-2")), Some(0.01));
    assert_eq!(p.per_gb(&cr, e, Some("eu-west-1")), Some(0.02));
    assert_eq!(p.per_gb(&cr, i, Some("eu-west-1")), Some(0.0));
    let nat = Route::NatGateway { cross_zone: true };
    let via = p
        .per_gb(&dest(TrafficClass::Internet, nat), e, None)
        .unwrap();
    assert!((via - (0.09 + 0.045 + 0.01)).abs() < 1e-12, "{via}");
    let back = p
        .per_gb(&dest(TrafficClass::Internet, nat), i, None)
        .unwrap();
    assert!((back - (0.045 + 0.01)).abs() < 1e-12, "{back}");
    assert_eq!(
        p.per_gb(
            &dest(TrafficClass::SameRegion, Route::GatewayEndpoint),
            e,
            None
        ),
        Some(0.0)
    );
    assert_eq!(
        p.per_gb(&dest(TrafficClass::Unplaced, direct), e, None),
        None
    );
    assert!((p.dollars(1 << 30, 0.09) - 0.09).abs() < 1e-15);
    // Tiers and overrides.
    let p = Prices::for_region(&t, "us-east-1", 3, &Overrides::default()).unwrap();
    assert_eq!(p.internet_out, 0.05);
    let o = Overrides {
        cross_zone_out: Some(0.02),
        ..Overrides::default()
    };
    let p = Prices::for_region(&t, "us-east-1", 0, &o).unwrap();
    assert_eq!(p.cross_zone_out, 0.02);
    assert!(Prices::for_region(&t, "xx-nowhere-1", 0, &o).is_none());
}

const SMALL: &str = "schema: 1\ndate: \"2025-06\"\nsources: { s: \"x\" }\nregions:\n  us-east-1:\n    internet_out: [{ up_to_gb: 10240, usd: 0.09 }, { usd: 0.05 }]\n    inter_region_out: { default: 0.02 }\n    cross_zone: { out: 0.01, in: 0.01 }\n    source: { transfer: s }\n";

fn error_of(text: &str) -> String {
    PriceTable::parse("f.yaml", text).unwrap_err().to_string()
}

#[test]
fn invalid_files_are_rejected_with_the_field_named() {
    assert!(PriceTable::parse("f.yaml", SMALL).is_ok());
    for (bad, field) in [
        (
            SMALL.replace("usd: 0.09", "usd: -0.09"),
            "regions.us-east-1.internet_out[0].usd",
        ),
        (
            SMALL.replace("usd: 0.09", "usd: 90"),
            "regions.us-east-1.internet_out[0].usd",
        ),
        (
            SMALL.replace("{ usd: 0.05 }", "{ up_to_gb: 5, usd: 0.05 }"),
            "regions.us-east-1.internet_out[1].up_to_gb",
        ),
        (
            SMALL.replace("up_to_gb: 10240, ", ""),
            "regions.us-east-1.internet_out[0].up_to_gb",
        ),
        (
            SMALL.replace("out: 0.01", "out: .nan"),
            "regions.us-east-1.cross_zone.out",
        ),
        (SMALL.replace("schema: 1", "schema: 2"), "schema"),
        (SMALL.replace("us-east-1:", "US East:"), "regions.US East"),
        (
            SMALL.replace("transfer: s", "transfer: t"),
            "regions.us-east-1.source.transfer",
        ),
        (format!("{SMALL}gigabyte_bytes: 1000\n"), "gigabyte_bytes"),
    ] {
        let e = error_of(&bad);
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        assert!(e.contains("f.yaml"), "{e}");
    }
    let e = error_of(&SMALL.replace("cross_zone:", "cross_zones:"));
    assert!(e.contains("cross_zones"), "{e}");
}

/// A tiny xorshift generator: property tests without another dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Property: every generated valid file parses to exactly the prices written; every file
/// with one byte changed either parses or fails with an error, never a panic.
#[test]
fn generated_files_parse_to_what_was_written_and_mutations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let regions = 1 + rng.below(4);
        let mut text =
            String::from("schema: 1\ndate: \"2025-06\"\nsources: { s: \"src\" }\nregions:\n");
        let mut want = Vec::new();
        for r in 0..regions {
            let tiers = 1 + rng.below(4);
            let mut bound = 0u64;
            let mut parts = Vec::new();
            let mut prices = Vec::new();
            for k in 0..tiers {
                let usd = rng.below(100_000) as f64 / 10_000.0;
                prices.push(usd);
                if k + 1 < tiers {
                    bound += 1 + rng.below(100_000);
                    parts.push(format!("{{ up_to_gb: {bound}, usd: {usd} }}"));
                } else {
                    parts.push(format!("{{ usd: {usd} }}"));
                }
            }
            let cz = rng.below(1000) as f64 / 1000.0;
            text.push_str(&format!(
                "  r{r}-test-1:\n    internet_out: [{}]\n    inter_region_out: {{ default: 0.02 }}\n    cross_zone: {{ out: {cz}, in: {cz} }}\n    source: {{ transfer: s }}\n",
                parts.join(", ")
            ));
            want.push((format!("r{r}-test-1"), prices, cz));
        }
        let t = PriceTable::parse("gen", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (name, prices, cz) in &want {
            let r = &t.regions[name];
            let got: Vec<f64> = r.internet_out.iter().map(|t| t.usd).collect();
            assert_eq!(&got, prices);
            assert_eq!(r.cross_zone_out, *cz);
        }
        let mut bytes = text.into_bytes();
        for _ in 0..20 {
            let at = rng.below(bytes.len() as u64) as usize;
            let old = bytes[at];
            bytes[at] = b" :{},[]-.0123456789abcxyz\n\""[rng.below(27) as usize];
            if let Ok(s) = std::str::from_utf8(&bytes) {
                if let Ok(t) = PriceTable::parse("mutated", s) {
                    // Whatever parses still satisfies the checks.
                    for r in t.regions.values() {
                        assert!(r.internet_out.iter().all(|t| (0.0..=10.0).contains(&t.usd)));
                        assert!(r.internet_out.last().unwrap().up_to_gb.is_none());
                    }
                }
            }
            bytes[at] = old;
        }
    }
}
