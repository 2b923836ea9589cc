//! Price: what a byte costs, from AWS's data-transfer prices.
//!
//! The built-in table (`agent/data/aws-prices.yaml`) gives every figure with its source and date;
//! `prices.file` replaces it with a file of the same schema, and `prices.override` replaces single
//! prices. A GB is 2^30 bytes (AWS's price-list tier bounds and S3's FAQ are binary; OpenCost
//! divides by 1024³ too). Prices are per byte counted: a price change applies to bytes counted
//! after it, never to what was already costed.

//!
//! In: our region (from classification), the `prices` config. Out: dollars for each drained
//! entry (or none: unpriced), the prices in force and their gauges.

mod pricer;
mod prices;
mod table;
#[cfg(test)]
mod tests;

pub use pricer::{PriceMetrics, Pricer};
pub use prices::Prices;
pub use table::{PriceError, PriceTable, RegionPrices, Tier, BUILT_IN, GIB};
