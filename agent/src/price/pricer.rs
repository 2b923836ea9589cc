//! The pricing step of a drain: the prices for our region once it is known (said once when
//! the table has none), and the dollars of each entry at the prices in force when it is counted.

use prometheus_client::{encoding::EncodeLabelSet, metrics::family::Family};

use super::{PriceTable, Prices};
use crate::{
    config::PricesConfig,
    vocab::{Destination, Direction, DollarGauge, Registries},
};

/// `netcost_price_dollars_per_gigabyte`: the prices in force.
#[derive(Clone, Default)]
pub struct PriceMetrics {
    price: Family<PriceLabels, DollarGauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriceLabels {
    price: &'static str,
}

impl PriceMetrics {
    /// In the durable registry: the totals' dollars were counted at these prices.
    pub fn register(registries: &mut Registries) -> PriceMetrics {
        let m = PriceMetrics::default();
        registries.durable().register(
            "price_dollars_per_gigabyte",
            "Prices in force, USD per GB (2^30 bytes): cross_zone_out, cross_zone_in, inter_region_out, internet_out, nat_gateway",
            m.price.clone(),
        );
        m
    }

    fn set(&self, prices: &Prices) {
        for (price, value) in [
            ("cross_zone_out", prices.cross_zone_out),
            ("cross_zone_in", prices.cross_zone_in),
            ("inter_region_out", prices.inter_region_out),
            ("internet_out", prices.internet_out),
            ("nat_gateway", prices.nat_gateway_per_gb.unwrap_or(0.0)),
        ] {
            self.price.get_or_create(&PriceLabels { price }).set(value);
        }
    }
}

pub struct Pricer {
    table: PriceTable,
    config: PricesConfig,
    /// Our region's prices, once our region is known (and in the table).
    prices: Option<Prices>,
    region: Option<String>,
    metrics: PriceMetrics,
}

impl Pricer {
    pub fn new(table: PriceTable, config: PricesConfig, metrics: PriceMetrics) -> Pricer {
        Pricer {
            table,
            config,
            prices: None,
            region: None,
            metrics,
        }
    }

    /// Takes our region as classification knows it now; returns the new prices when they
    /// changed (for whoever mirrors them). A region the table does not have is an error said
    /// once: bytes are then counted, not priced.
    pub fn refresh(&mut self, region: Option<&str>) -> Option<&Prices> {
        if region == self.region.as_deref() {
            return None;
        }
        self.region = region.map(str::to_owned);
        let Some(region) = region else {
            self.prices = None;
            return None;
        };
        let t = &self.table;
        self.prices =
            Prices::for_region(t, region, self.config.internet_tier, &self.config.overrides);
        match &self.prices {
            Some(p) => {
                self.metrics.set(p);
                tracing::info!(%region, table = %t.origin, date = %t.date, cross_zone_out = p.cross_zone_out, internet_out = p.internet_out, inter_region_out = p.inter_region_out, nat_gateway = ?p.nat_gateway_per_gb, "prices in force");
            }
            None => {
                tracing::error!(%region, table = %t.origin, "no prices for our region in the price table: bytes are counted but not priced (netcost_unpriced_bytes_total); give prices.file or prices.override")
            }
        }
        self.prices.as_ref()
    }

    /// Dollars for `bytes` to `destination`, priced now (a later price change never rewrites
    /// them); `None` when they cannot be priced (unplaced or unknown class, no prices).
    pub fn dollars(
        &self,
        destination: &Destination,
        direction: Direction,
        remote_region: Option<&str>,
        bytes: u64,
    ) -> Option<f64> {
        let prices = self.prices.as_ref()?;
        let per_gb = prices.per_gb(destination, direction, remote_region)?;
        Some(prices.dollars(bytes, per_gb))
    }
}
