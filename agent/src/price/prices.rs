//! The prices in force on this node, and what one byte costs by its destination.

use std::collections::BTreeMap;

use super::PriceTable;
use crate::{
    config::PriceOverrides,
    vocab::{Destination, Direction, Route, TrafficClass},
};

/// The prices in force on this node: our region's, the chosen internet tier, the overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Prices {
    pub region: String,
    pub internet_out: f64,
    pub inter_region_out: f64,
    pub inter_region_to: BTreeMap<String, f64>,
    pub cross_zone_out: f64,
    pub cross_zone_in: f64,
    pub public_ip_out: f64,
    pub public_ip_in: f64,
    pub nat_gateway_per_gb: Option<f64>,
    pub gigabyte_bytes: f64,
}

impl Prices {
    /// `None` when the table has no such region (the caller says so; nothing is guessed).
    pub fn for_region(
        table: &PriceTable,
        region: &str,
        internet_tier: usize,
        overrides: &PriceOverrides,
    ) -> Option<Prices> {
        let r = table.regions.get(region)?;
        let tier = r
            .internet_out
            .get(internet_tier)
            .or(r.internet_out.last())?;
        Some(Prices {
            region: region.to_owned(),
            internet_out: overrides.internet_out.unwrap_or(tier.usd),
            inter_region_out: overrides.inter_region_out.unwrap_or(r.inter_region_out),
            inter_region_to: if overrides.inter_region_out.is_some() {
                BTreeMap::new()
            } else {
                r.inter_region_to.clone()
            },
            cross_zone_out: overrides.cross_zone_out.unwrap_or(r.cross_zone_out),
            cross_zone_in: overrides.cross_zone_in.unwrap_or(r.cross_zone_in),
            public_ip_out: r.public_ip_out,
            public_ip_in: r.public_ip_in,
            nat_gateway_per_gb: overrides.nat_gateway_per_gb.or(r.nat_gateway_per_gb),
            gigabyte_bytes: table.gigabyte_bytes,
        })
    }

    /// USD per GB for bytes to `destination` in `direction`, `remote_region` being the region of
    /// a cross-region remote. `None` when the class cannot be priced (unplaced, unknown).
    pub fn per_gb(
        &self,
        destination: &Destination,
        direction: Direction,
        remote_region: Option<&str>,
    ) -> Option<f64> {
        let egress = direction == Direction::Egress;
        let transfer = match destination.class {
            TrafficClass::SameZone | TrafficClass::SameRegion => 0.0,
            TrafficClass::CrossZone if egress => self.cross_zone_out,
            TrafficClass::CrossZone => self.cross_zone_in,
            TrafficClass::RegionalPublic if egress => self.public_ip_out,
            TrafficClass::RegionalPublic => self.public_ip_in,
            // Charged once, by the sending region; inbound is free.
            TrafficClass::CrossRegion if egress => remote_region
                .and_then(|r| self.inter_region_to.get(r).copied())
                .unwrap_or(self.inter_region_out),
            TrafficClass::CrossRegion => 0.0,
            TrafficClass::Internet if egress => self.internet_out,
            TrafficClass::Internet => 0.0,
            TrafficClass::Unplaced | TrafficClass::Unknown => return None,
        };
        let gateway = match destination.route {
            Route::NatGateway { cross_zone } => {
                // Processing on every byte through it, both ways; reaching a gateway in another
                // zone is a cross-zone hop on top.
                let hop = match (cross_zone, egress) {
                    (false, _) => 0.0,
                    (true, true) => self.cross_zone_out,
                    (true, false) => self.cross_zone_in,
                };
                self.nat_gateway_per_gb.unwrap_or(0.0) + hop
            }
            Route::Direct | Route::GatewayEndpoint => 0.0,
        };
        Some(transfer + gateway)
    }

    /// Dollars for `bytes` at `per_gb`.
    pub fn dollars(&self, bytes: u64, per_gb: f64) -> f64 {
        bytes as f64 / self.gigabyte_bytes * per_gb
    }
}
