//! The series' labels (borrowed from the tables that hold them) and the collector that encodes
//! both families straight from the tables, at each encoding of the durable registry.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};
use serde::{Deserialize, Serialize};

use super::{board::Totals, State};
use crate::vocab::{Direction, Owner, Peer, PodLabels, TrafficClass};

const BYTES_HELP: &str = "Bytes of netcost_network_bytes_total by remote end: each owner's top destinations per direction (remote_kind service, pod, node, aws_service, address, external), the rest in remote_kind=\"other\"";
const COST_HELP: &str =
    "Dollars of netcost_network_cost_dollars_total by remote end, as netcost_destination_bytes_total";

/// The labels of one destination series: the owner's, the direction and class, the remote end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationLabels {
    pub owner: Owner,
    pub pod: PodLabels,
    pub direction: Direction,
    pub class: TrafficClass,
    pub peer: Peer,
}

/// A series' labels, borrowed from the board that holds it. Empty values are left out, as in
/// the traffic series.
pub(super) struct SeriesLabels<'a>(Place<'a>, TrafficClass, &'a Peer);

impl EncodeLabelSet for SeriesLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let SeriesLabels(place, class, peer) = self;
        ("owner", place.owner).encode(encoder.encode_label())?;
        let p = place.pod;
        for (key, value) in [
            ("namespace", p.namespace.as_str()),
            ("pod", p.pod.as_str()),
            ("workload_kind", p.workload_kind.as_str()),
            ("workload", p.workload.as_str()),
            ("pod_uid", p.pod_uid.as_str()),
        ] {
            if !value.is_empty() {
                (key, value).encode(encoder.encode_label())?;
            }
        }
        ("traffic_class", *class).encode(encoder.encode_label())?;
        ("direction", place.direction).encode(encoder.encode_label())?;
        ("remote_kind", peer.kind).encode(encoder.encode_label())?;
        for (key, value) in [
            ("remote_namespace", &*peer.namespace),
            ("remote_name", &*peer.name),
            ("remote_zone", &*peer.zone),
            ("remote_address", &*peer.address),
        ] {
            if !value.is_empty() {
                (key, value).encode(encoder.encode_label())?;
            }
        }
        if peer.port != 0 {
            ("port", peer.port.to_string().as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Where a board's series are: its owner, direction and pod.
#[derive(Clone, Copy)]
pub(super) struct Place<'a> {
    pub(super) owner: Owner,
    pub(super) direction: Direction,
    pub(super) pod: &'a PodLabels,
}

/// Encodes the two families from the boards, at each encoding of the durable registry (after
/// the checkpoint that holds them, like every total).
#[derive(Debug)]
pub(super) struct Families(pub(super) Arc<Mutex<State>>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let each = |f: &mut dyn FnMut(SeriesLabels, Totals) -> Result<(), std::fmt::Error>| {
            for (&(owner, direction), pods) in &state.boards {
                for (pod, board) in pods {
                    let place = Place {
                        owner,
                        direction,
                        pod,
                    };
                    for (class, peer, totals, _) in board.series() {
                        f(SeriesLabels(place, class, peer), totals)?;
                    }
                }
            }
            Ok(())
        };
        {
            let bytes = Unit::Bytes;
            let mut m = encoder.encode_descriptor(
                "destination",
                BYTES_HELP,
                Some(&bytes),
                MetricType::Counter,
            )?;
            each(&mut |labels, t| {
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&t.bytes, None)
            })?;
        }
        let dollars = Unit::Other("dollars".into());
        let mut m = encoder.encode_descriptor(
            "destination_cost",
            COST_HELP,
            Some(&dollars),
            MetricType::Counter,
        )?;
        each(&mut |labels, t| {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&t.dollars, None)
        })
    }
}
