//! The last step of classification: what a public destination really is and which way the bytes
//! leave the VPC. An address in an AWS service range is that service (in our region: not internet
//! on the bill); internet-bound bytes of a subnet that routes through a NAT gateway pass it (and
//! cross a zone first when it sits in another zone), unless a gateway VPC endpoint carries them.

use std::{net::IpAddr, path::Path, sync::Arc};

use super::{
    kubecost::{KubecostConfigError, KubecostRules},
    services::{RangesError, ServiceRanges},
    topology::{StaticTopology, Topology},
};
use crate::{
    config::{EgressConfig, ServicesConfig},
    vocab::{classify_place, Destination, Place, Route, TrafficClass},
};

#[derive(Clone, Debug, Default)]
pub struct Router {
    pub services: ServiceRanges,
    /// The NAT gateway's place (zone and/or zone ID), if the subnet has one.
    pub nat_gateway: Option<Place>,
    /// Service tags reached through gateway VPC endpoints.
    pub gateway_endpoints: Vec<String>,
    /// Rules of a Kubecost network-costs config, when one is given.
    pub kubecost: Option<KubecostRules>,
}

/// A Router's inputs that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Services(#[from] RangesError),
    #[error(transparent)]
    Kubecost(#[from] KubecostConfigError),
}

impl Router {
    /// Cloud-service ranges (bundled or `services.file`), the NAT gateway, gateway endpoints
    /// and, when given, Kubecost's rules (which may turn the AWS ranges off).
    pub fn from_config(
        services: &ServicesConfig,
        egress: &EgressConfig,
        kubecost_config: Option<&Path>,
    ) -> Result<Router, RouterError> {
        let ranges = match &services.file {
            Some(path) => ServiceRanges::load(path)?,
            None if services.bundled => ServiceRanges::bundled(),
            None => ServiceRanges::default(),
        };
        tracing::info!(
            origin = %ranges.origin,
            prefixes = ranges.prefixes,
            bundled_date = super::services::bundled_date().unwrap_or("?"),
            "cloud-service ranges"
        );
        let kubecost = kubecost_config.map(KubecostRules::load).transpose()?;
        let ranges = match &kubecost {
            Some(k) if !k.amazon_web_services => ServiceRanges::default(),
            _ => ranges,
        };
        Ok(Router {
            kubecost,
            services: ranges,
            nat_gateway: egress.nat_gateway.clone(),
            gateway_endpoints: egress.gateway_endpoints.clone(),
        })
    }

    /// Where bytes to `addr` go. `outbound`: our side opened the connection (or we cannot tell);
    /// replies to connections the internet opened to us do not pass a NAT gateway.
    pub fn destination(
        &self,
        topology: &StaticTopology,
        addr: IpAddr,
        outbound: bool,
    ) -> Destination {
        let class = self.class(topology, addr);
        let custom = self
            .kubecost
            .as_ref()
            .and_then(|k| k.service(addr))
            .map(Arc::<str>::from);
        if class != TrafficClass::Internet {
            return Destination {
                class,
                service: custom,
                route: Route::Direct,
            };
        }
        let own = topology.own();
        let service = self.services.lookup(addr);
        let (class, in_region_service) = match service.and_then(|s| s.region.as_deref()) {
            Some(region) if own.region.as_deref() == Some(region) => {
                (TrafficClass::SameRegion, true)
            }
            Some(_) if own.region.is_some() => (TrafficClass::CrossRegion, false),
            _ => (TrafficClass::Internet, false),
        };
        let tag = custom.or_else(|| service.map(|s| s.tag.clone()));
        let via_endpoint = in_region_service
            && tag
                .as_deref()
                .is_some_and(|t| self.gateway_endpoints.iter().any(|e| e == t));
        let route = if via_endpoint {
            Route::GatewayEndpoint
        } else if outbound {
            self.internet_route(own)
        } else {
            Route::Direct
        };
        Destination {
            class,
            service: tag,
            route,
        }
    }

    /// The class of `addr`: Kubecost's direct classification, then what the cluster places, then
    /// Kubecost's lists, then netcost's own classification (see `kubecost`).
    fn class(&self, topology: &StaticTopology, addr: IpAddr) -> TrafficClass {
        let Some(k) = &self.kubecost else {
            return topology.classify(addr);
        };
        if let Some(place) = k.direct(addr) {
            return classify_place(topology.own(), place);
        }
        if topology.lookup(addr).is_some() {
            return topology.classify(addr);
        }
        k.listed(addr).unwrap_or_else(|| topology.classify(addr))
    }

    /// The route bytes leaving the VPC take from this node: through the NAT gateway if there is
    /// one (also used for series created before any byte).
    pub fn internet_route(&self, own: &Place) -> Route {
        match &self.nat_gateway {
            Some(gw) => {
                let gw = Place {
                    region: own.region.clone(),
                    ..gw.clone()
                };
                Route::NatGateway {
                    cross_zone: classify_place(own, &gw) == TrafficClass::CrossZone,
                }
            }
            None => Route::Direct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> StaticTopology {
        let mut own = Place::zone("us-east-1a", "us-east-1");
        own.zone_id = Some("use1-az1".into());
        StaticTopology::new(own, vec!["10.0.0.0/16".parse().unwrap()], vec![])
    }

    fn router(gateway_zone_id: Option<&str>, endpoints: &[&str]) -> Router {
        Router {
            services: ServiceRanges::parse(
                "test",
                "52.216.0.0/15 aws-s3 us-east-1\n3.5.0.0/19 aws-s3 eu-west-1\n3.218.180.0/22 aws-dynamodb us-east-1\n",
            )
            .unwrap(),
            nat_gateway: gateway_zone_id.map(|z| Place {
                zone_id: Some(z.into()),
                ..Place::default()
            }),
            gateway_endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            kubecost: None,
        }
    }

    fn dest(r: &Router, addr: &str, outbound: bool) -> Destination {
        r.destination(&topology(), addr.parse().unwrap(), outbound)
    }

    #[test]
    fn services_of_our_region_are_not_internet_and_others_are_cross_region() {
        let r = router(None, &[]);
        let s3 = dest(&r, "52.216.8.1", true);
        assert_eq!(
            (s3.class, s3.service.as_deref(), s3.route),
            (TrafficClass::SameRegion, Some("aws-s3"), Route::Direct)
        );
        let eu = dest(&r, "3.5.1.1", true);
        assert_eq!(
            (eu.class, eu.service.as_deref()),
            (TrafficClass::CrossRegion, Some("aws-s3"))
        );
        assert_eq!(dest(&r, "203.0.113.1", true), TrafficClass::Internet.into());
        assert_eq!(dest(&r, "10.0.5.5", true), TrafficClass::Unplaced.into());
    }

    #[test]
    fn nat_gateway_and_gateway_endpoints_are_told_apart() {
        // Gateway in another zone (zone IDs compared), S3 through a gateway endpoint.
        let r = router(Some("use1-az2"), &["aws-s3"]);
        assert_eq!(
            dest(&r, "203.0.113.1", true).route,
            Route::NatGateway { cross_zone: true }
        );
        assert_eq!(dest(&r, "52.216.8.1", true).route, Route::GatewayEndpoint);
        // DynamoDB has no endpoint here: through the NAT gateway.
        let ddb = dest(&r, "3.218.180.9", true);
        assert_eq!(
            (ddb.class, ddb.route),
            (
                TrafficClass::SameRegion,
                Route::NatGateway { cross_zone: true }
            )
        );
        // Endpoints only serve our region: S3 of eu-west-1 goes through the NAT gateway.
        assert_eq!(
            dest(&r, "3.5.1.1", true).route,
            Route::NatGateway { cross_zone: true }
        );
        // Connections the internet opened to us do not pass the NAT gateway.
        assert_eq!(dest(&r, "203.0.113.1", false).route, Route::Direct);
        // Gateway in our own zone.
        let same = router(Some("use1-az1"), &[]);
        assert_eq!(
            dest(&same, "203.0.113.1", true).route,
            Route::NatGateway { cross_zone: false }
        );
        assert_eq!(
            same.internet_route(topology().own()),
            Route::NatGateway { cross_zone: false }
        );
    }
}
