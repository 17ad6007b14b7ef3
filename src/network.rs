//! Cluster address ranges: where Service cluster IPs and pod IPs come from.
//!
//! The defaults lie inside 127.0.0.0/8, which Linux routes to the loopback
//! device as a whole, so a single machine needs no network set-up at all:
//! every pod address and Service address is local. docs/networking.md says
//! how a multi-machine cluster routes instead.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

/// An IPv4 range `base/bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub bits: u8,
}

/// A range that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected an IPv4 range such as 127.64.0.0/10")]
pub struct BadCidr(String);

impl std::str::FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_string());
        let (ip, bits) = s.trim().split_once('/').ok_or_else(bad)?;
        let bits: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        Ok(Cidr::new(ip, bits))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

impl Cidr {
    /// The range of `ip/bits` (host bits cleared).
    pub const fn new(ip: Ipv4Addr, bits: u8) -> Self {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Cidr {
            base: Ipv4Addr::from_bits(ip.to_bits() & mask),
            bits,
        }
    }

    fn mask(&self) -> u32 {
        if self.bits == 0 {
            0
        } else {
            u32::MAX << (32 - self.bits)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// Addresses in the range.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.bits)
    }

    /// The address at `offset` from the base.
    pub fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base).wrapping_add(offset))
    }

    /// The offset of `ip` in the range.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| u32::from(ip) - u32::from(self.base))
    }
}

/// The cluster's ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Cluster IPs of Services (kube-apiserver's `--service-cluster-ip-range`).
    pub service_cidr: Cidr,
    /// Pod addresses (`--cluster-cidr`), handed to nodes in pieces.
    pub cluster_cidr: Cidr,
    /// The size of each node's piece (`--node-cidr-mask-size`).
    pub node_mask: u8,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            service_cidr: Cidr::new(Ipv4Addr::new(127, 32, 0, 0), 16),
            cluster_cidr: Cidr::new(Ipv4Addr::new(127, 64, 0, 0), 10),
            // 8,190 pod addresses per node, 512 nodes
            node_mask: 19,
        }
    }
}

impl NetworkConfig {
    /// The `kubernetes` Service's address: the first of the Service range.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        self.service_cidr.nth(1)
    }

    /// The cluster DNS Service's address: the tenth of the Service range
    /// (k3s's 10.43.0.10).
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        self.service_cidr.nth(10)
    }

    /// Check the ranges fit together.
    pub fn check(&self) -> Result<(), String> {
        if self.node_mask < self.cluster_cidr.bits || self.node_mask > 30 {
            return Err(format!(
                "--node-cidr-mask-size {} must be between the cluster range's /{} and /30",
                self.node_mask, self.cluster_cidr.bits
            ));
        }
        if self.service_cidr.bits > 28 {
            return Err(format!(
                "--service-cidr {} is too small (at most /28)",
                self.service_cidr
            ));
        }
        Ok(())
    }
}

static CONFIG: OnceLock<NetworkConfig> = OnceLock::new();

/// Set this process's ranges (once, at server start; later calls are ignored).
pub fn set(cfg: NetworkConfig) {
    let _ = CONFIG.set(cfg);
}

/// This process's ranges.
pub fn config() -> NetworkConfig {
    CONFIG.get().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_answer_membership() {
        let c: Cidr = "127.64.32.7/19".parse().unwrap();
        assert_eq!(c.to_string(), "127.64.32.0/19");
        assert!(c.contains(Ipv4Addr::new(127, 64, 63, 255)));
        assert!(!c.contains(Ipv4Addr::new(127, 64, 64, 0)));
        assert_eq!(c.size(), 8192);
        assert_eq!(c.offset(Ipv4Addr::new(127, 64, 32, 9)), Some(9));
        assert!("127.0.0.1".parse::<Cidr>().is_err());
        assert!("127.0.0.1/33".parse::<Cidr>().is_err());
        let d = NetworkConfig::default();
        assert_eq!(d.dns_service_ip(), Ipv4Addr::new(127, 32, 0, 10));
        assert!(d.check().is_ok());
    }
}
