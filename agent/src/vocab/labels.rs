//! The label sets of the traffic series (who, to where, which way), and label values that come
//! from outside: Kubernetes objects (an `ownerReferences[].kind` or `.name` is any non-empty
//! string the API server accepts) and files on the state disk. prometheus-client escapes `\\`,
//! `"` and newlines in the exposition; `clean` also replaces what would still mislead a reader or
//! a dashboard — control characters, line and paragraph separators, bidirectional overrides —
//! with U+FFFD, and bounds the length so one object cannot make every series it touches
//! kilobytes long.

use std::{borrow::Cow, fmt::Write as _, sync::Arc};

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use super::TrafficClass;

#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Egress,
    Ingress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    pub fn from_abi(d: u8) -> Direction {
        if d == agent_common::DIRECTION_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }

    /// The kernel's value (`DIRECTION_*`); the inverse of `from_abi`.
    pub fn abi(self) -> u8 {
        match self {
            Direction::Egress => agent_common::DIRECTION_EGRESS,
            Direction::Ingress => agent_common::DIRECTION_INGRESS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Who the bytes belong to: a pod, the node itself, or an identity we could not resolve.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Pod,
    Node,
    Unknown,
}

impl EncodeLabelValue for Owner {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Owner::Pod => "pod",
            Owner::Node => "node",
            Owner::Unknown => "unknown",
        })
    }
}

/// Who a pod is, as its series say it: fixed for the pod's life (namespace, name and UID are
/// immutable; the workload is resolved once, before the first series is created).
#[derive(
    Clone,
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
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub workload_kind: String,
    pub workload: String,
}

impl PodLabels {
    /// The same labels with every value cleaned (see `clean`).
    pub fn cleaned(&self) -> PodLabels {
        PodLabels {
            namespace: owned(&self.namespace),
            pod: owned(&self.pod),
            pod_uid: owned(&self.pod_uid),
            workload_kind: owned(&self.workload_kind),
            workload: owned(&self.workload),
        }
    }

    /// A pod known only by the UID in its cgroup path (no Kubernetes API, or the API never
    /// told us about it).
    pub fn uid_only(uid: &str) -> PodLabels {
        PodLabels {
            pod_uid: uid.to_owned(),
            ..PodLabels::default()
        }
    }
}

#[derive(
    Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TrafficLabels {
    pub owner: Owner,
    /// Empty unless `owner="pod"`.
    pub pod: PodLabels,
    /// Class, cloud service and route.
    pub destination: Destination,
    pub direction: Direction,
}

/// Labels with an empty value are left out (Prometheus treats an empty label as absent, and
/// node-owned series have no pod labels).
impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("owner", self.owner).encode(encoder.encode_label())?;
        for (key, value) in [
            ("namespace", &self.pod.namespace),
            ("pod", &self.pod.pod),
            ("workload_kind", &self.pod.workload_kind),
            ("workload", &self.pod.workload),
            ("pod_uid", &self.pod.pod_uid),
        ] {
            if !value.is_empty() {
                (key, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        ("traffic_class", self.destination.class).encode(encoder.encode_label())?;
        ("direction", self.direction).encode(encoder.encode_label())?;
        if let Some(service) = &self.destination.service {
            ("service", &**service).encode(encoder.encode_label())?;
        }
        match self.destination.route {
            Route::Direct => Ok(()),
            Route::NatGateway { cross_zone } => {
                ("nat_gateway", "true").encode(encoder.encode_label())?;
                let hop = if cross_zone {
                    "cross_zone"
                } else {
                    "same_zone"
                };
                ("nat_gateway_hop", hop).encode(encoder.encode_label())
            }
            Route::GatewayEndpoint => ("gateway_endpoint", "true").encode(encoder.encode_label()),
        }
    }
}

impl TrafficLabels {
    pub fn node(owner: Owner, destination: impl Into<Destination>, direction: Direction) -> Self {
        TrafficLabels {
            owner,
            pod: PodLabels::default(),
            destination: destination.into(),
            direction,
        }
    }

    pub fn pod(pod: &PodLabels, destination: impl Into<Destination>, direction: Direction) -> Self {
        TrafficLabels {
            owner: Owner::Pod,
            pod: pod.clone(),
            destination: destination.into(),
            direction,
        }
    }
}

/// How bytes leave the VPC.
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
pub enum Route {
    /// Within the VPC, or straight out through an internet gateway.
    #[default]
    Direct,
    /// Through the subnet's NAT gateway; `cross_zone` when it sits in another zone than ours.
    NatGateway { cross_zone: bool },
    /// Through a gateway VPC endpoint (S3, DynamoDB): free.
    GatewayEndpoint,
}

/// Where bytes went, fully.
#[derive(
    Clone,
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
pub struct Destination {
    pub class: TrafficClass,
    /// Cloud-service tag (`aws-s3`), when the address is in a service range.
    pub service: Option<Arc<str>>,
    pub route: Route,
}

impl From<TrafficClass> for Destination {
    fn from(class: TrafficClass) -> Destination {
        Destination {
            class,
            service: None,
            route: Route::Direct,
        }
    }
}

/// Longest label value kept whole, in bytes. Kubernetes names are at most 253 bytes; longer
/// values are cut and keep a hash of the whole, so two long values stay apart.
pub const MAX_VALUE_BYTES: usize = 256;

/// Characters replaced by U+FFFD.
fn misleading(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{FEFF}')
}

/// `value` as a label value may show it.
pub fn clean(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_VALUE_BYTES && !value.chars().any(misleading) {
        return Cow::Borrowed(value);
    }
    let mut out: String = value
        .chars()
        .map(|c| if misleading(c) { '\u{FFFD}' } else { c })
        .collect();
    if out.len() > MAX_VALUE_BYTES {
        // FNV-1a of the whole value: short, stable across restarts (the checkpoint keeps labels).
        let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut cut = MAX_VALUE_BYTES - 20;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("…{hash:016x}"));
    }
    Cow::Owned(out)
}

/// `clean` into an owned string.
pub fn owned(value: &str) -> String {
    clean(value).into_owned()
}

/// A service tag: lowercase letters, digits and dashes (it becomes a label value).
pub fn check_service_tag(tag: &str) -> Result<String, String> {
    let tag = tag.trim();
    if tag.is_empty() {
        return Err("must not be empty".into());
    }
    if !tag
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "{tag:?} is not a service tag such as \"aws-s3\" (lowercase letters, digits, dashes)"
        ));
    }
    Ok(tag.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_pass_untouched() {
        for v in [
            "cart-7d9f8c-x2x4p",
            "Deployment",
            "kube-system",
            "ünïcode-名前",
            "",
        ] {
            assert!(matches!(clean(v), Cow::Borrowed(_)), "{v}");
        }
    }

    #[test]
    fn control_characters_and_spoofing_marks_are_replaced() {
        assert_eq!(
            clean("a\nb\tc\u{0}d\u{7f}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}"
        );
        assert_eq!(clean("x\u{2028}y\u{202E}z"), "x\u{FFFD}y\u{FFFD}z");
        // Quotes and braces are not misleading once escaped: prometheus-client escapes them.
        assert_eq!(clean("a\"}b#"), "a\"}b#");
    }

    #[test]
    fn long_values_are_cut_and_stay_distinct() {
        let a = "x".repeat(10_000);
        let b = format!("{}y", "x".repeat(9_999));
        let (ca, cb) = (clean(&a), clean(&b));
        assert!(ca.len() <= MAX_VALUE_BYTES && cb.len() <= MAX_VALUE_BYTES);
        assert_ne!(ca, cb);
        assert_eq!(clean(&a), ca, "stable");
        // Cut on a character boundary.
        let wide = "名".repeat(200);
        assert!(clean(&wide).len() <= MAX_VALUE_BYTES);
    }
}
