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

/// Loopback: the pod's own ports (ingest's, the metrics', a sidecar's) are
/// no handler's business. Denied unless the operator allows it
/// (`--egress-allow-loopback`, for local development and tests).
pub const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

/// The NAT64 well-known prefix: `64:ff9b::a.b.c.d` reaches the IPv4 address
/// a.b.c.d through a translator, so it is checked as that address.
const NAT64: &str = "64:ff9b::/96";

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
    /// The built-in floor, loopback and `extra`.
    pub fn with(extra: &[IpNet]) -> Self {
        let mut floor = Self::with_loopback(extra);
        Arc::make_mut(&mut floor.0).extend(parse_networks(LOOPBACK.iter().copied()).expect("built in"));
        floor
    }

    /// The built-in floor and `extra`, loopback allowed.
    pub fn with_loopback(extra: &[IpNet]) -> Self {
        let mut nets = parse_networks(FLOOR.iter().copied()).expect("the built-in floor parses");
        nets.extend_from_slice(extra);
        Self(Arc::new(nets))
    }
}

/// The IPv4 address `addr` stands for, if it is one in IPv6 form: mapped
/// (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`).
fn as_ipv4(addr: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = addr else { return addr };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let nat64: IpNet = NAT64.parse().expect("built in");
    if nat64.contains(&addr) {
        let [.., a, b, c, d] = v6.octets();
        return IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
    }
    addr
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

    /// The denied network containing `addr`, if any. IPv4-mapped and NAT64
    /// IPv6 addresses are checked as the IPv4 address they stand for.
    pub fn denies(&self, addr: IpAddr) -> Option<&IpNet> {
        let addr = as_ipv4(addr);
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
    fn loopback_is_denied_unless_the_operator_allows_it_in_every_form() {
        let denied = Policy::from_spec(&Floor::default(), None);
        for addr in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"] {
            assert!(denied.denies(ip(addr)).is_some(), "{addr}");
        }
        let allowed = Policy::from_spec(&Floor::with_loopback(&[]), None);
        for addr in ["127.0.0.1", "::1", "64:ff9b::7f00:1"] {
            assert!(allowed.denies(ip(addr)).is_none(), "{addr}");
        }
        assert!(allowed.denies(ip("1.2.3.4")).is_none());
    }

    #[test]
    fn nat64_forms_of_the_floors_ipv4_addresses_are_denied() {
        let p = Policy::from_spec(&Floor::with_loopback(&[]), None);
        // 169.254.169.254 (metadata) and 0.0.0.1 through the NAT64 prefix.
        for addr in ["64:ff9b::a9fe:a9fe", "64:ff9b::1"] {
            assert!(p.denies(ip(addr)).is_some(), "{addr}");
        }
        assert!(
            p.denies(ip("64:ff9b::102:304")).is_none(),
            "1.2.3.4 is not in the floor"
        );
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
            "127.0.0.1",
            "::1",
        ] {
            assert!(p.denies(ip(a)).is_some(), "{a} must be denied");
        }
        for a in ["10.1.2.3", "93.184.216.34", "fd00:ec2::253", "100.100.100.201"] {
            assert!(p.denies(ip(a)).is_none(), "{a} must be allowed");
        }
    }

    #[test]
    fn hubs_add_denials_and_carve_exceptions_only_from_their_own() {
        let spec = EgressPolicy {
            denied_networks: vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()],
            allowed_networks: vec!["169.254.0.0/16".into(), "10.1.0.0/16".into(), "0.0.0.0/0".into()],
        };
        // (Loopback allowed by the operator, so the hub's own denial of
        // 127.0.0.2 is what is tested.)
        let p = Policy::from_spec(&Floor::with_loopback(&[]), Some(&spec));
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
        let p = Policy::from_spec(&Floor::with_loopback(&[]), Some(&narrow));
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
        let p = Policy::from_spec(&Floor::with_loopback(&extra), Some(&lifting));
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
