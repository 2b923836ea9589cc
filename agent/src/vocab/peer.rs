//! What the remote end of bytes is, as destination series name it: a Service's backends, a pod
//! of this node, a node, an AWS service, or an address (exact inside the VPC; outside it grouped
//! by /24 or /48, so one pod talking to the internet cannot make one series per host).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    Hash,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    /// Everything outside an owner's top destinations, and bytes without a remote address.
    #[default]
    Other,
    /// The backends of a Service (named by the EndpointSlice that lists the address).
    Service,
    /// A pod of this node (named by the inventory).
    Pod,
    /// A node's address.
    Node,
    /// An AWS service's range (`aws-s3`, `aws-dynamodb`, or a Kubecost-configured service).
    AwsService,
    /// An address nothing names, inside the VPC or private.
    Address,
    /// An address on the internet (or another region's public range), grouped.
    External,
}

impl PeerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Other => "other",
            PeerKind::Service => "service",
            PeerKind::Pod => "pod",
            PeerKind::Node => "node",
            PeerKind::AwsService => "aws_service",
            PeerKind::Address => "address",
            PeerKind::External => "external",
        }
    }
}

impl EncodeLabelValue for PeerKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The remote end. Empty fields are left out of the series' labels.
#[derive(
    Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Peer {
    pub kind: PeerKind,
    /// The Service's or pod's namespace.
    pub namespace: Arc<str>,
    /// The Service, the pod's workload, the node or the AWS service.
    pub name: Arc<str>,
    /// The remote zone, when something places it.
    pub zone: Arc<str>,
    /// The address (or its group) when nothing names it.
    pub address: Arc<str>,
    /// The local port connections the remote end opened to us came to (a serving port); 0: none.
    pub port: u16,
}

/// One shared empty value: most peers leave most fields empty, and remote ends are many.
fn text(s: &str) -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    if s.is_empty() {
        EMPTY.clone()
    } else {
        Arc::from(s)
    }
}

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            kind: PeerKind::Other,
            namespace: text(""),
            name: text(""),
            zone: text(""),
            address: text(""),
            port: 0,
        }
    }
}

impl Peer {
    /// The bucket of everything else.
    pub fn other() -> Peer {
        Peer::default()
    }

    pub fn named(kind: PeerKind, namespace: &str, name: &str, zone: Option<&str>) -> Peer {
        Peer {
            kind,
            namespace: text(namespace),
            name: text(name),
            zone: text(zone.unwrap_or("")),
            ..Peer::default()
        }
    }

    /// An address nothing names: exact (`Address`), or grouped (`External`).
    pub fn address(addr: IpAddr, external: bool, zone: Option<&str>) -> Peer {
        let (kind, text) = if external {
            (PeerKind::External, external_group(addr))
        } else {
            (PeerKind::Address, addr.to_string())
        };
        Peer {
            kind,
            address: text.as_str().into(),
            zone: self::text(zone.unwrap_or("")),
            ..Peer::default()
        }
    }
}

impl Peer {
    /// The same peer with every value cleaned (for peers read back from the state disk).
    pub fn cleaned(&self) -> Peer {
        let c = |v: &Arc<str>| -> Arc<str> { text(&super::labels::clean(v)) };
        Peer {
            kind: self.kind,
            namespace: c(&self.namespace),
            name: c(&self.name),
            zone: c(&self.zone),
            address: c(&self.address),
            port: self.port,
        }
    }
}

/// The group an internet address is counted in: its /24 (IPv4) or /48 (IPv6).
pub fn external_group(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let [x, y, z, _] = a.octets();
            format!("{}/24", Ipv4Addr::new(x, y, z, 0))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{}/48", Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_addresses_are_grouped_by_24_and_48() {
        assert_eq!(
            external_group("203.0.113.77".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            external_group("2001:db8:113:5::9".parse().unwrap()),
            "2001:db8:113::/48"
        );
        let p = Peer::address("10.0.16.10".parse().unwrap(), false, Some("us-east-1b"));
        assert_eq!((p.kind, &*p.address), (PeerKind::Address, "10.0.16.10"));
    }
}
