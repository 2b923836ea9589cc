//! The counting buffers as the drain sees them: the seam between the kernel's maps and the drain
//! logic, so the drain is unit-tested against a fake kernel.

use agent_common::{Counter, FlowKey, OverflowKey};

/// The kernel side of a drain, as the drain logic sees it.
pub trait CountingBuffers {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The epoch the programs write under (`CONTROL[0]`).
    fn epoch(&mut self) -> Result<u32, Self::Error>;
    /// Points the programs at buffer `epoch & 1`.
    fn set_epoch(&mut self, epoch: u32) -> Result<(), Self::Error>;
    /// Returns once no program can still be writing to the buffer that was active before.
    fn wait_for_writers(&mut self) -> Result<(), Self::Error>;
    /// Every entry of flow buffer `index` (per-CPU values summed), left in place. Entries that
    /// cannot be read are skipped (and stay for a later drain).
    fn read_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    fn read_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, Self::Error>;
    /// The valid write-combining slots of buffer `index` on every CPU, left in place.
    fn read_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    /// Deletes these entries from buffer `index` and clears its write-combining slots. Returns
    /// the entries that could not be deleted.
    fn clear(
        &mut self,
        index: u32,
        flows: &[FlowKey],
        overflow: &[OverflowKey],
    ) -> Result<Undeleted, Self::Error>;
    /// The `LOST` slots (per direction, summed over CPUs): monotonic, never reset.
    fn lost(&mut self) -> Result<[Counter; 2], Self::Error>;
}

/// Entries a `clear` could not delete.
#[derive(Debug, Default)]
pub struct Undeleted {
    pub flows: Vec<FlowKey>,
    pub overflow: Vec<OverflowKey>,
}

/// Sums one entry's per-CPU values.
pub fn sum_per_cpu(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |mut acc, v| {
        acc.add(v.bytes, v.packets);
        acc
    })
}
