//! Egress safety: which destination addresses deliveries may connect to.
//! Link-local and cloud metadata networks are denied unless a hub allows
//! them; a hub may deny more. Checked on resolved addresses, so a name that
//! resolves to a denied address (DNS rebinding included) is refused too.

use crate::resources::hub::EgressPolicy;
use ipnet::IpNet;
use std::net::IpAddr;

/// Denied unless a hub lists them in `allowedNetworks`.
pub const DENIED_BY_DEFAULT: &[&str] = &[
    "169.254.0.0/16",    // IPv4 link-local, including 169.254.169.254 (cloud metadata)
    "fe80::/10",         // IPv6 link-local
    "fd00:ec2::254/128", // AWS metadata over IPv6
];

/// The effective networks a hub denies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    denied: Vec<IpNet>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_spec(None)
    }
}

impl Policy {
    /// Defaults, minus the hub's allowed networks, plus its denied ones.
    /// Entries that do not parse are ignored (the CRD schema rejects them).
    pub fn from_spec(spec: Option<&EgressPolicy>) -> Self {
        let parse = |s: &str| s.parse::<IpNet>().ok();
        let allowed: Vec<IpNet> = spec
            .map(|e| e.allowed_networks.iter().filter_map(|s| parse(s)).collect())
            .unwrap_or_default();
        let mut denied: Vec<IpNet> = DENIED_BY_DEFAULT
            .iter()
            .filter_map(|s| parse(s))
            .filter(|net| !allowed.iter().any(|a| a.contains(net)))
            .collect();
        if let Some(e) = spec {
            denied.extend(e.denied_networks.iter().filter_map(|s| parse(s)));
        }
        Self { denied }
    }

    /// The denied network containing `addr`, if any. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are checked as the IPv4 address they are.
    pub fn denies(&self, addr: IpAddr) -> Option<&IpNet> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
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
    fn metadata_and_link_local_are_denied_by_default() {
        let p = Policy::default();
        for a in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "169.254.0.1",
        ] {
            assert!(p.denies(ip(a)).is_some(), "{a} must be denied");
        }
        for a in ["127.0.0.1", "::1", "10.1.2.3", "93.184.216.34", "fd00:ec2::253"] {
            assert!(p.denies(ip(a)).is_none(), "{a} must be allowed");
        }
    }

    #[test]
    fn hubs_add_and_lift_denials() {
        let spec = EgressPolicy {
            denied_networks: vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()],
            allowed_networks: vec!["169.254.0.0/16".into()],
        };
        let p = Policy::from_spec(Some(&spec));
        assert!(p.denies(ip("127.0.0.2")).is_some());
        assert!(p.denies(ip("::ffff:127.0.0.2")).is_some());
        assert!(p.denies(ip("10.9.9.9")).is_some());
        assert!(p.denies(ip("127.0.0.1")).is_none());
        assert!(p.denies(ip("169.254.169.254")).is_none(), "lifted");
        assert!(p.denies(ip("fe80::1")).is_some(), "still denied");
    }
}
