//! Who a remote address is, as far as the cluster says: the EndpointSlice that lists it (a
//! Service's backend, in its zone), a pod of this node, a node. Rebuilt with the classification
//! table when the inventory changes; what it does not name is an address (or, outside, its
//! group).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    inventory::Inventory,
    vocab::{clean, Peer, PeerKind, Place},
};

#[derive(Debug, Default)]
pub struct PeerIndex {
    by_addr: HashMap<IpAddr, Peer>,
}

impl PeerIndex {
    /// Nodes, then this node's pods, then Service backends: the most useful name wins (a pod
    /// that backs a Service is named by its Service, which is what a change would act on).
    pub fn build(inventory: &Inventory, own: &Place) -> PeerIndex {
        let mut by_addr = HashMap::new();
        let mut interned: HashMap<String, Arc<str>> = HashMap::new();
        // Names come from API objects: cleaned like every label value from outside.
        let mut intern = |s: &str| -> Arc<str> {
            let s = &*clean(s);
            match interned.get(s) {
                Some(a) => a.clone(),
                None => {
                    let a: Arc<str> = s.into();
                    interned.insert(s.to_owned(), a.clone());
                    a
                }
            }
        };
        for node in inventory.nodes() {
            let peer = Peer {
                kind: PeerKind::Node,
                name: intern(&node.name),
                zone: intern(node.place.zone.as_deref().unwrap_or("")),
                ..Peer::default()
            };
            for ip in &node.addresses {
                by_addr.insert(*ip, peer.clone());
            }
        }
        let own_zone = intern(own.zone.as_deref().unwrap_or(""));
        for pod in inventory.pods().filter(|p| !p.finished) {
            let peer = Peer {
                kind: PeerKind::Pod,
                namespace: intern(&pod.namespace),
                name: intern(&pod.workload.name),
                zone: own_zone.clone(),
                ..Peer::default()
            };
            for ip in &pod.ips {
                by_addr.insert(*ip, peer.clone());
            }
        }
        for slice in inventory.slices() {
            let Some(service) = &slice.service else {
                continue;
            };
            for e in &slice.endpoints {
                let zone = inventory.endpoint_place(e).and_then(|p| p.zone);
                by_addr.insert(
                    e.addr,
                    Peer {
                        kind: PeerKind::Service,
                        namespace: intern(&slice.namespace),
                        name: intern(service),
                        zone: intern(zone.as_deref().unwrap_or("")),
                        ..Peer::default()
                    },
                );
            }
        }
        PeerIndex { by_addr }
    }

    pub fn get(&self, addr: IpAddr) -> Option<&Peer> {
        self.by_addr.get(&addr)
    }
}
