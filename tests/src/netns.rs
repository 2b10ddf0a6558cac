//! A network namespace joined to the host by a veth pair, for agents that must have their
//! own IP address (and change it). Needs root (`ip netns add`).
//!
//! Addresses: two private /30 networks, `10.X.Y.Z/30` and `10.X.Y.Z+4/30`; the host side
//! holds `.Z+1` and `.Z+5`, the namespace starts on `.Z+2` (default route via `.Z+1`) and
//! [`Netns::change_address`] moves it to `.Z+6` (default route via `.Z+5`), as a DHCP lease
//! on a new network would. [`Netns::set_link`] takes the host end of the pair down and up,
//! which cuts every route between the namespace and the host (packets are dropped, nothing
//! is reset), as an unplugged cable would. Names are unique per test run; everything is
//! deleted on drop, also when the test fails.

use std::process::Command;

/// See the module doc.
#[derive(Debug)]
pub struct Netns {
    /// The namespace name (`ip netns exec NAME ...`).
    pub name: String,
    host_if: String,
    ns_if: String,
    /// `10.X.Y.Z`: the first /30.
    base: [u8; 4],
    /// Whether the namespace runs on the second /30.
    moved: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace and the veth pair, addresses and routes. An error says which
    /// `ip` command failed (typically: not root).
    pub fn create() -> Result<Netns, String> {
        let tag: u32 = rand::random::<u32>() & 0x00ff_ffff;
        let name = format!("drover-e2e-{}-{tag:06x}", std::process::id());
        // `10.(200..=249).(0..=255).(0,8,..,248)`: unlikely to meet a real network.
        let base = [
            10,
            200 + (tag % 50) as u8,
            ((tag >> 8) & 0xff) as u8,
            (((tag >> 16) & 0x1f) * 8) as u8,
        ];
        let ns = Netns {
            name: name.clone(),
            host_if: format!("dvh{tag:06x}"),
            ns_if: format!("dvn{tag:06x}"),
            base,
            moved: false,
        };
        ip(&["netns", "add", &name])?;
        // From here on, drop cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &name])?;
        ip(&["addr", "add", &ns.cidr(1), "dev", &ns.host_if])?;
        ip(&["addr", "add", &ns.cidr(5), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "addr", "add", &ns.cidr(2), "dev", &ns.ns_if])?;
        ip(&["-n", &name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &name, "route", "add", "default", "via", &ns.addr(1)])?;
        Ok(ns)
    }

    fn addr(&self, offset: u8) -> String {
        let [a, b, c, d] = self.base;
        format!("{a}.{b}.{c}.{}", d + offset)
    }

    fn cidr(&self, offset: u8) -> String {
        format!("{}/30", self.addr(offset))
    }

    /// The host's address the namespace reaches it at (stays reachable after a change).
    pub fn host_ip(&self) -> String {
        self.addr(1)
    }

    /// The namespace's current address.
    pub fn ns_ip(&self) -> String {
        self.addr(if self.moved { 6 } else { 2 })
    }

    /// Takes the host end of the veth pair up or down: down, the namespace's packets to the
    /// host are dropped (established connections stall, new ones time out) until it is up.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }

    /// Moves the namespace to the second /30 (`ip addr del`/`add` inside it).
    pub fn change_address(&mut self) -> Result<String, String> {
        ip(&[
            "-n",
            &self.name,
            "addr",
            "del",
            &self.cidr(2),
            "dev",
            &self.ns_if,
        ])?;
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &self.cidr(6),
            "dev",
            &self.ns_if,
        ])?;
        ip(&[
            "-n",
            &self.name,
            "route",
            "replace",
            "default",
            "via",
            &self.addr(5),
        ])?;
        self.moved = true;
        Ok(self.ns_ip())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and so the pair; the explicit link
        // delete covers a pair whose peer never moved in.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
