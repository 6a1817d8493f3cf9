//! IP ranges (`10.0.0.0/8`, `fc00::/7`) and the ranges a DeCloud container never reaches by
//! default: the volunteer's own networks, the host, link-local (cloud metadata), multicast.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One IPv4 or IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// IPv4 ranges denied to containers unless `--allow-egress` opens them: "this network",
/// private (RFC 1918), carrier-grade NAT, loopback, link-local (169.254.169.254, the cloud
/// metadata address), multicast, reserved and broadcast.
pub(crate) const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// IPv6 ranges denied by default: unspecified, loopback, IPv4-mapped, unique-local,
/// link-local, multicast.
pub(crate) const DENIED_V6: &[&str] = &[
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

impl Cidr {
    /// The range's first address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 range.
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in this range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn parse_all(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|s| s.parse().expect("built-in ranges parse"))
            .collect()
    }

    /// The default denied ranges, IPv4 then IPv6.
    pub(crate) fn default_denied() -> Vec<Cidr> {
        let mut v = Self::parse_all(DENIED_V4);
        v.extend(Self::parse_all(DENIED_V6));
        v
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX` or a bare address (a /32 or /128). Host bits must be zero, so a typo
    /// like `192.168.1.1/16` is refused rather than silently widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > 64 {
            return Err(format!("{s:.64}…: too long for an IP range"));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP range (e.g. 192.168.1.0/24, fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {network}/{prefix}?"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        for (s, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
        ] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), shown, "{s}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            &"1".repeat(100),
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains() {
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains("172.19.0.1".parse().unwrap()));
        assert!(!c.contains("172.32.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:172.20.1.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let ula: Cidr = "fc00::/7".parse().unwrap();
        assert!(ula.contains("fd12::1".parse().unwrap()));
        assert_eq!(
            Cidr::default_denied().len(),
            DENIED_V4.len() + DENIED_V6.len()
        );
    }
}
