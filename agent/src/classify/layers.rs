//! The tiers of the classification table that come from the inputs on the side: AWS's (our
//! interfaces' subnets, every subnet EC2 lists) and the cluster's (every node's addresses and pod
//! CIDRs, this node's pods, every EndpointSlice address), built from the facts the inventory
//! holds.

use std::sync::Arc;

use super::topology::{Layer, PlaceSource, StaticTopology, Tier};
use crate::{
    inventory::{aws::CloudFacts, Inventory},
    vocab::Place,
};

/// The AWS tier: our interfaces' subnets at our place (a subnet is single-zone), then every
/// subnet EC2 lists at its zone.
pub fn aws_layer(cloud: &CloudFacts) -> Layer {
    let mut layer = Layer::default();
    if cloud.place.is_placed() {
        for c in &cloud.network.subnets {
            layer.add(PlaceSource::InstanceMetadata, *c, &cloud.place);
        }
    }
    for (c, place) in &cloud.subnets {
        layer.add(PlaceSource::Ec2, *c, place);
    }
    layer
}

/// The cluster tier: every node's addresses and pod CIDRs at the node's place, this node's pods'
/// IPs at `own` (VPC CNI pod IPs come from the node's subnets), and every EndpointSlice address
/// at its endpoint's place.
pub fn cluster_layer(inventory: &Inventory, own: &Place) -> Layer {
    let mut layer = Layer::default();
    for node in inventory.nodes() {
        for ip in &node.addresses {
            layer.add_host(PlaceSource::Nodes, *ip, &node.place);
        }
        for c in &node.pod_cidrs {
            layer.add(PlaceSource::Nodes, *c, &node.place);
        }
    }
    for ip in inventory.pod_ips() {
        layer.add_host(PlaceSource::Pods, *ip, own);
    }
    for slice in inventory.slices() {
        for e in &slice.endpoints {
            if let Some(place) = inventory.endpoint_place(e) {
                layer.add_host(PlaceSource::EndpointSlices, e.addr, &place);
            }
        }
    }
    layer
}

/// The classification table: `base` (the config's tiers, and instance metadata's and EC2's)
/// with the cluster tier. Our own place: what the config says, else our Node's labels, else
/// `fallback` (IMDS).
pub fn cluster_topology(
    inventory: &Inventory,
    base: &StaticTopology,
    own_node: Option<&str>,
    fallback: &Place,
) -> StaticTopology {
    let own = base
        .own()
        .clone()
        .or(inventory.node_place(own_node))
        .or(fallback.clone());
    let layer = cluster_layer(inventory, &own);
    base.with_own(own)
        .with_layer(Tier::Cluster, Arc::new(layer))
        .with_public(inventory.public_addresses())
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
