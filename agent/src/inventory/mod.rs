//! An input on the side: what the Kubernetes API says (this node's pods, every node's place,
//! every EndpointSlice) and what AWS says (instance metadata, EC2 subnets), kept current by
//! watchers and pollers. It holds facts; classification and attribution read them.
//!
//! In: the `kubernetes`, `imds` and `ec2` config, the API server, AWS. Out: `SharedInventory`,
//! `KubeView` and `KubeHealth`, `aws::SharedCloud`, and the metric groups of both sources
//! (`kube::KubeMetrics`, `aws::AwsMetrics`).

pub mod aws;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod kube;
pub mod objects;
pub mod store;
#[cfg(test)]
mod tests;

pub use objects::{
    controller_of, direct_workload, node_meta, pod_meta, region_of_zone, slice_key, slice_meta,
    EndpointMeta, Interner, NodeMeta, OwnerRef, PodMeta, SliceMeta, Workload, REGION_LABEL,
    SERVICE_NAME_LABEL, ZONE_ID_LABEL, ZONE_LABEL,
};
pub use store::{Inventory, KubeHealth, KubeView, SharedInventory, WatchHealth};
