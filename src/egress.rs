//! Egress safety: which destination addresses deliveries may connect to.
//! An operator-level floor (link-local, cloud metadata, "this network",
//! multicast, broadcast, plus what the operator adds) that no Hub can lift;
//! a Hub may deny more, and carve exceptions only out of its own denials.
//! Checked on resolved addresses, so a name that resolves to a denied
//! address (DNS rebinding included) is refused too.

use crate::resources::hub::EgressPolicy;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// Always denied, whatever a Hub says.
pub const FLOOR: &[&str] = &[
    "169.254.0.0/16",     // IPv4 link-local, including 169.254.169.254 (AWS, GCP, Azure, OpenStack metadata)
    "fe80::/10",          // IPv6 link-local
    "fd00:ec2::254/128",  // AWS metadata over IPv6
    "100.100.100.200/32", // Alibaba Cloud metadata
    "168.63.129.16/32",   // Azure wire server
    "0.0.0.0/8",          // "this network": 0.0.0.0 reaches the local host
    "::/128",             // the unspecified IPv6 address, likewise
    "224.0.0.0/4",        // IPv4 multicast
    "ff00::/8",           // IPv6 multicast
    "255.255.255.255/32", // broadcast
];

/// Private and shared ranges, denied too when the operator asks
/// (`--egress-deny-private`): for clusters whose handlers are all public.
pub const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// Parses CIDRs, naming the first that does not parse.
pub fn parse_networks<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, String> {
    cidrs
        .into_iter()
        .map(|s| {
            s.trim()
                .parse::<IpNet>()
                .map_err(|_| format!("{s:?} is not a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\""))
        })
        .collect()
}

/// The operator's floor: the built-in list plus what the operator adds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Floor(Arc<Vec<IpNet>>);

impl Default for Floor {
    fn default() -> Self {
        Self::with(&[])
    }
}

impl Floor {
    pub fn with(extra: &[IpNet]) -> Self {
        let mut nets = parse_networks(FLOOR.iter().copied()).expect("the built-in floor parses");
        nets.extend_from_slice(extra);
        Self(Arc::new(nets))
    }
}

/// The effective networks a hub's deliveries may not reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    floor: Floor,
    denied: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_spec(&Floor::default(), None)
    }
}

impl Policy {
    /// The floor, plus the hub's denied networks minus its allowed
    /// exceptions. Entries that do not parse are ignored (the CRD schema
    /// rejects them).
    pub fn from_spec(floor: &Floor, spec: Option<&EgressPolicy>) -> Self {
        let parse = |list: &[String]| list.iter().filter_map(|s| s.parse::<IpNet>().ok()).collect();
        Self {
            floor: floor.clone(),
            denied: spec.map(|e| parse(&e.denied_networks)).unwrap_or_default(),
            allowed: spec.map(|e| parse(&e.allowed_networks)).unwrap_or_default(),
        }
    }

    /// The denied network containing `addr`, if any. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are checked as the IPv4 address they are.
    pub fn denies(&self, addr: IpAddr) -> Option<&IpNet> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        if let Some(net) = self.floor.0.iter().find(|net| net.contains(&addr)) {
            return Some(net);
        }
        if self.allowed.iter().any(|net| net.contains(&addr)) {
            return None;
        }
        self.denied.iter().find(|net| net.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_floor_denies_metadata_link_local_unspecified_multicast_and_broadcast() {
        let p = Policy::default();
        for a in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "169.254.0.1",
            "100.100.100.200",
            "168.63.129.16",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ] {
            assert!(p.denies(ip(a)).is_some(), "{a} must be denied");
        }
        for a in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "93.184.216.34",
            "fd00:ec2::253",
            "100.100.100.201",
        ] {
            assert!(p.denies(ip(a)).is_none(), "{a} must be allowed");
        }
    }

    #[test]
    fn hubs_add_denials_and_carve_exceptions_only_from_their_own() {
        let spec = EgressPolicy {
            denied_networks: vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()],
            allowed_networks: vec!["169.254.0.0/16".into(), "10.1.0.0/16".into(), "0.0.0.0/0".into()],
        };
        let p = Policy::from_spec(&Floor::default(), Some(&spec));
        assert!(p.denies(ip("169.254.169.254")).is_some(), "the floor cannot be lifted");
        assert!(p.denies(ip("fe80::1")).is_some());
        assert!(
            p.denies(ip("10.1.2.3")).is_none(),
            "an exception carved from the hub's own denial"
        );
        assert!(
            p.denies(ip("127.0.0.2")).is_none(),
            "0.0.0.0/0 lifts all of the hub's own denials"
        );
        let narrow = EgressPolicy {
            denied_networks: vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()],
            allowed_networks: vec!["10.1.0.0/16".into()],
        };
        let p = Policy::from_spec(&Floor::default(), Some(&narrow));
        assert!(p.denies(ip("127.0.0.2")).is_some());
        assert!(p.denies(ip("::ffff:127.0.0.2")).is_some());
        assert!(p.denies(ip("10.9.9.9")).is_some());
        assert!(p.denies(ip("10.1.9.9")).is_none());
        assert!(p.denies(ip("127.0.0.1")).is_none());
    }

    #[test]
    fn the_operator_extends_the_floor_and_no_hub_lifts_it() {
        let extra = parse_networks(["127.0.0.2/32"]).unwrap();
        let lifting = EgressPolicy {
            denied_networks: vec![],
            allowed_networks: vec!["127.0.0.0/8".into()],
        };
        let p = Policy::from_spec(&Floor::with(&extra), Some(&lifting));
        assert!(p.denies(ip("127.0.0.2")).is_some());
        assert!(p.denies(ip("127.0.0.1")).is_none());
        assert!(
            parse_networks(["10.0.0.0/8", "nonsense"])
                .unwrap_err()
                .contains("\"nonsense\"")
        );
        let private = Floor::with(&parse_networks(PRIVATE.iter().copied()).unwrap());
        let p = Policy::from_spec(&private, None);
        assert!(p.denies(ip("192.168.1.1")).is_some() && p.denies(ip("fd12::1")).is_some());
    }
}
