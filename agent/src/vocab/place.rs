//! Where things are (zone, zone ID, region) and the classes of traffic between two places.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// The traffic classes netcost reports, in the order AWS prices them.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TrafficClass {
    /// Same availability zone, or never leaving the node (loopback, link-local): free.
    SameZone,
    /// Another zone of our region: $0.01/GB each way.
    CrossZone,
    /// A public or Elastic IP address of our own region (another node's ExternalIP): AWS charges
    /// $0.01/GB each way for it, whatever the zone, like cross-zone traffic.
    RegionalPublic,
    /// Inside our region but in no zone: a regional AWS service (S3, DynamoDB) of our region,
    /// reached at its public address. No transfer charge (a NAT gateway's processing aside).
    SameRegion,
    /// Another region: charged to the sending region.
    CrossRegion,
    /// A public address outside every configured range.
    Internet,
    /// A private address (our VPC, RFC 1918, CGNAT, IPv6 ULA) in no configured zone: it cannot be
    /// internet, and which zone it is in is unknown.
    Unplaced,
    /// The remote address was not recorded (the flow map was full; the bytes went to the pod's
    /// overflow entry).
    #[default]
    Unknown,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 8] = [
        TrafficClass::SameZone,
        TrafficClass::CrossZone,
        TrafficClass::RegionalPublic,
        TrafficClass::SameRegion,
        TrafficClass::CrossRegion,
        TrafficClass::Internet,
        TrafficClass::Unplaced,
        TrafficClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::SameZone => "same_zone",
            TrafficClass::CrossZone => "cross_zone",
            TrafficClass::RegionalPublic => "regional_public",
            TrafficClass::SameRegion => "same_region",
            TrafficClass::CrossRegion => "cross_region",
            TrafficClass::Internet => "internet",
            TrafficClass::Unplaced => "unplaced",
            TrafficClass::Unknown => "unknown",
        }
    }
}

impl EncodeLabelValue for TrafficClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Where something is: zone name, AWS zone ID and region, each possibly unknown.
///
/// Zones compare by zone ID when both sides have one: zone *names* are shuffled per AWS account
/// (`us-east-1a` in one account is not `us-east-1a` in another), zone IDs (`use1-az1`) are not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Place {
    pub zone: Option<String>,
    pub zone_id: Option<String>,
    pub region: Option<String>,
}

impl Place {
    pub fn zone(zone: &str, region: &str) -> Place {
        Place {
            zone: Some(zone.to_owned()),
            zone_id: None,
            region: Some(region.to_owned()),
        }
    }

    pub fn region(region: &str) -> Place {
        Place {
            zone: None,
            zone_id: None,
            region: Some(region.to_owned()),
        }
    }

    /// Whether two places are the same zone: `None` when it cannot be told.
    pub fn same_zone(&self, other: &Place) -> Option<bool> {
        if let (Some(a), Some(b)) = (&self.zone_id, &other.zone_id) {
            return Some(a == b);
        }
        match (&self.zone, &other.zone) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        }
    }

    /// Fills what `self` does not know from `other` (the first source that knows a field wins).
    pub fn or(self, other: Place) -> Place {
        Place {
            zone: self.zone.or(other.zone),
            zone_id: self.zone_id.or(other.zone_id),
            region: self.region.or(other.region),
        }
    }

    pub fn is_placed(&self) -> bool {
        self.region.is_some() && (self.zone.is_some() || self.zone_id.is_some())
    }
}

/// The class of traffic between our own place and a remote place. Nothing is guessed: a remote
/// whose zone (or our own) is unknown is `Unplaced` unless the regions alone decide.
pub fn classify_place(own: &Place, remote: &Place) -> TrafficClass {
    if let (Some(a), Some(b)) = (&own.region, &remote.region) {
        if a != b {
            return TrafficClass::CrossRegion;
        }
    }
    match own.same_zone(remote) {
        Some(true) => TrafficClass::SameZone,
        Some(false) if own.region.is_some() && own.region == remote.region => {
            TrafficClass::CrossZone
        }
        _ => TrafficClass::Unplaced,
    }
}
