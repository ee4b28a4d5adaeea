//! What the kernel knows about interfaces and neighbours: MAC addresses, MTU, addresses, the
//! neighbour table (`ip neigh`), the route to a peer (`ip route get`). Read by the control
//! thread, never on the per-packet path.

use core::net::IpAddr;
use std::collections::HashMap;
use std::process::Command;

/// A MAC address.
pub type Mac = [u8; 6];

fn sys(iface: &str, file: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{file}"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("interface {iface}: reading {file}: {e}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The interface's MAC address.
///
/// # Errors
/// The interface does not exist or has no Ethernet address.
pub fn mac(iface: &str) -> Result<Mac, String> {
    let s = sys(iface, "address")?;
    parse_mac(&s).ok_or_else(|| format!("interface {iface}: no Ethernet address ({s:?})"))
}

/// The interface's MTU.
///
/// # Errors
/// The interface does not exist.
pub fn mtu(iface: &str) -> Result<usize, String> {
    let s = sys(iface, "mtu")?;
    s.parse()
        .map_err(|_| format!("interface {iface}: bad MTU {s:?}"))
}

/// Number of RX queues of the interface.
///
/// # Errors
/// The interface does not exist.
pub fn rx_queues(iface: &str) -> Result<u32, String> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map_err(|e| format!("interface {iface}: {e}"))?;
    Ok(dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32)
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first IPv4 and IPv6 (global) addresses of the interface.
///
/// # Errors
/// `ip` failed.
pub fn addresses(iface: &str) -> Result<(Option<IpAddr>, Option<IpAddr>), String> {
    let out = ip(&["-o", "addr", "show", "dev", iface])?;
    let mut v4 = None;
    let mut v6 = None;
    for line in out.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                let Some(addr) = words
                    .next()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                match addr {
                    IpAddr::V4(_) if v4.is_none() => v4 = Some(addr),
                    IpAddr::V6(a) if v6.is_none() && (a.segments()[0] & 0xffc0) != 0xfe80 => {
                        v6 = Some(addr);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok((v4, v6))
}

/// The neighbour table of an interface (resolved entries only).
///
/// # Errors
/// `ip` failed.
pub fn neighbours(iface: &str) -> Result<HashMap<IpAddr, Mac>, String> {
    let mut table = HashMap::new();
    for family in ["-4", "-6"] {
        let out = ip(&[family, "neigh", "show", "dev", iface])?;
        table.extend(parse_neighbours(&out));
    }
    Ok(table)
}

/// Parses `ip neigh show dev X` output: `ADDR lladdr MAC STATE`; FAILED and INCOMPLETE
/// entries have no `lladdr` and are skipped.
pub fn parse_neighbours(out: &str) -> impl Iterator<Item = (IpAddr, Mac)> + '_ {
    out.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let addr = words.next()?.parse::<IpAddr>().ok()?;
        let mut mac = None;
        while let Some(w) = words.next() {
            if w == "lladdr" {
                mac = words.next().and_then(parse_mac);
            }
        }
        Some((addr, mac?))
    })
}

/// The next hop towards `dst` (`ip route get`): the gateway if routed, else `dst` itself, and
/// the interface and source address the kernel would use.
///
/// # Errors
/// No route.
pub fn route_to(dst: IpAddr) -> Result<(IpAddr, String, Option<IpAddr>), String> {
    let out = ip(&["route", "get", &dst.to_string()])?;
    let mut via = None;
    let mut dev = None;
    let mut src = None;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        match w {
            "via" => via = words.next().and_then(|a| a.parse().ok()),
            "dev" => dev = words.next().map(str::to_owned),
            "src" => src = words.next().and_then(|a| a.parse().ok()),
            _ => {}
        }
    }
    let dev = dev.ok_or_else(|| format!("no route to {dst}"))?;
    Ok((via.unwrap_or(dst), dev, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_neighbour_lines() {
        let out = "10.0.0.2 lladdr 02:00:00:00:00:02 REACHABLE\n\
                   10.0.0.3  FAILED\n\
                   fd00::2 lladdr 02:00:00:00:00:03 router STALE\n";
        let got: Vec<_> = parse_neighbours(out).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, [2, 0, 0, 0, 0, 2]);
        assert_eq!(got[1].0, "fd00::2".parse::<IpAddr>().expect("addr"));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
