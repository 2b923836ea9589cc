//! Kubernetes objects as the API serves them, for the inventory's tests and the classification
//! tests that build an inventory.

use k8s_openapi::{
    api::{
        core::v1::{
            ContainerStatus, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodIP, PodSpec,
            PodStatus,
        },
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::inventory::{REGION_LABEL, SERVICE_NAME_LABEL, ZONE_ID_LABEL, ZONE_LABEL};

pub fn pod(uid: &str, name: &str, owner: Option<(&str, &str)>, ip: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            uid: Some(uid.into()),
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some([("pod-template-hash".to_owned(), "7d9f8c".to_owned())].into()),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            pod_ip: ip.map(str::to_owned),
            pod_ips: ip.map(|ip| vec![PodIP { ip: ip.into() }]),
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "web".into(),
                container_id: Some("containerd://abc123".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

pub fn node(name: &str, zone: &str, zone_id: &str, ip: &str, cidr: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (ZONE_LABEL.to_owned(), zone.to_owned()),
                    (REGION_LABEL.to_owned(), "us-east-1".to_owned()),
                    (ZONE_ID_LABEL.to_owned(), zone_id.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidrs: Some(vec![cidr.into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "ip-x".into(),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// (addresses, node, zone, pod) of one endpoint.
pub type TestEndpoint<'a> = (
    &'a [&'a str],
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

pub fn slice(name: &str, service: Option<&str>, endpoints: Vec<TestEndpoint>) -> EndpointSlice {
    use k8s_openapi::api::{core::v1::ObjectReference, discovery::v1::Endpoint};
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: service.map(|s| [(SERVICE_NAME_LABEL.to_owned(), s.to_owned())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: endpoints
            .into_iter()
            .map(|(addrs, node, zone, pod)| Endpoint {
                addresses: addrs.iter().map(|a| a.to_string()).collect(),
                node_name: node.map(Into::into),
                zone: zone.map(Into::into),
                target_ref: pod.map(|p| ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(p.into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: None,
    }
}
