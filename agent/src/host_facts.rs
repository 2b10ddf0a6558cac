//! What the agent reports about its host: hostname, arch, OS, kernel, IP addresses.
//! Read from `/proc` on Linux; anything unreadable is reported empty, never an error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Facts about this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Non-loopback IP addresses.
    pub ips: Vec<String>,
    /// Stable machine id; filled by the system-id module when present, empty here.
    pub system_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl HostFacts {
    /// Collects the facts of this host.
    pub fn collect() -> HostFacts {
        let mut hostname = read_trimmed("/proc/sys/kernel/hostname");
        if hostname.is_empty() {
            hostname = read_trimmed("/etc/hostname");
        }
        HostFacts {
            hostname,
            arch: std::env::consts::ARCH.to_string(),
            os: std::env::consts::OS.to_string(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            ips: ips(),
            system_id: String::new(),
        }
    }
}

/// Non-loopback, non-link-local addresses of this host.
pub fn ips() -> Vec<String> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        out.extend(parse_fib_trie(&trie).into_iter().map(IpAddr::V4));
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        out.extend(parse_if_inet6(&v6).into_iter().map(IpAddr::V6));
    }
    let mut seen = Vec::new();
    for ip in out {
        if !seen.contains(&ip) {
            seen.push(ip);
        }
    }
    seen.iter().map(IpAddr::to_string).collect()
}

/// Local IPv4 addresses from `/proc/net/fib_trie` (`/32 host LOCAL` entries).
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut last: Option<Ipv4Addr> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last = rest.trim().parse().ok();
        } else if t.contains("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
            && !ip.is_link_local()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Global IPv6 addresses from `/proc/net/if_inet6` (scope 00).
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (hex, scope) = (cols.first()?, cols.get(3)?);
            if *scope != "00" || hex.len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(hex, 16).ok()?;
            let ip = Ipv6Addr::from(bits);
            (!ip.is_loopback()).then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 10.0.0.5\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.0.0.5\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(text), vec![Ipv4Addr::new(10, 0, 0, 5)]);
    }

    #[test]
    fn if_inet6() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo\n20010db8000000000000000000000001 02 40 00 80     eth0\nfe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert_eq!(
            parse_if_inet6(text),
            vec!["2001:db8::1".parse::<Ipv6Addr>().unwrap()]
        );
    }
}
