//! What the kernel knows about interfaces, neighbours and routes: MAC addresses, MTU and queues
//! (sysfs), and through rtnetlink (`netlink-packet-route` messages on a `netlink-sys` socket, no
//! runtime, no child process) the interface addresses, the neighbour tables and the route to a
//! peer. Read by the control thread, never on the per-packet path.
//!
//! [`NextHops`] is what the control thread keeps: the neighbour tables and each peer's route,
//! read in full once and then kept current from the kernel's notifications ([`Watch`]: neighbour
//! and route changes, read without blocking), with [`NextHops::resync`] as the periodic backstop.

use crate::error::{Error, Result};
use core::net::IpAddr;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// A MAC address.
pub type Mac = [u8; 6];

fn sysfs(iface: &str, file: &str) -> Result<String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{file}"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::new(format!("interface {iface}: reading {file}"), e))
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
pub fn mac(iface: &str) -> Result<Mac> {
    let s = sysfs(iface, "address")?;
    parse_mac(&s)
        .ok_or_else(|| Error::msg(format!("interface {iface}: no Ethernet address ({s:?})")))
}

/// The interface's MTU.
///
/// # Errors
/// The interface does not exist.
pub fn mtu(iface: &str) -> Result<usize> {
    let s = sysfs(iface, "mtu")?;
    s.parse()
        .map_err(|_| Error::msg(format!("interface {iface}: bad MTU {s:?}")))
}

/// Whether the interface can carry packets now (its `operstate` is `up`, or `unknown` for a
/// driver that does not report one): not when it is administratively down or has lost its
/// carrier (a cable pulled, the other end of a veth down).
///
/// # Errors
/// The interface does not exist.
pub fn link_up(iface: &str) -> Result<bool> {
    Ok(matches!(
        sysfs(iface, "operstate")?.as_str(),
        "up" | "unknown"
    ))
}

/// Number of RX queues of the interface.
///
/// # Errors
/// The interface does not exist.
pub fn rx_queues(iface: &str) -> Result<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map_err(|e| Error::new(format!("interface {iface}"), e))?;
    Ok(dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32)
}

/// The index of interface `iface`.
///
/// # Errors
/// No such interface (`ENODEV`).
pub fn ifindex(iface: &str) -> Result<u32> {
    crate::sys::interface_index(iface).map_err(|e| Error::new(format!("interface {iface}"), e))
}

/// The first IPv4 and the first IPv6 (not link-local) address of the interface.
///
/// # Errors
/// No such interface, or the rtnetlink request failed.
pub fn addresses(iface: &str) -> Result<(Option<IpAddr>, Option<IpAddr>)> {
    let index = ifindex(iface)?;
    let all = Rtnl::open()?
        .addresses(index)
        .map_err(|e| e.within(format!("interface {iface}")))?;
    let v4 = all.iter().copied().find(IpAddr::is_ipv4);
    let v6 = all
        .iter()
        .copied()
        .find(|a| matches!(a, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) != 0xfe80));
    Ok((v4, v6))
}

/// One entry of a neighbour table (ARP or ND).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The interface it is on.
    pub ifindex: u32,
    /// Its IP address.
    pub address: IpAddr,
    /// Its MAC address while the entry is valid (reachable, stale, delay, probe, permanent):
    /// `None` for an entry being resolved or that failed, and for a removed one.
    pub mac: Option<Mac>,
}

/// The kernel's answer to a route lookup (`ip route get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The gateway if the destination is routed through one, else the destination itself.
    pub next_hop: IpAddr,
    /// The output interface.
    pub ifindex: u32,
    /// The preferred source address, if the route names one.
    pub source: Option<IpAddr>,
}

/// A change the kernel announced on a [`Watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A neighbour entry was added, changed or removed ([`Neighbour::mac`] `None`).
    Neighbour(Neighbour),
    /// A route was added, changed or removed: lookups may answer differently now.
    Routes,
    /// Notifications were lost (the socket's receive buffer overflowed, or one could not be
    /// read): everything must be read again.
    Lost,
}

/// Receive buffer for rtnetlink answers and notifications: the kernel fills at most 32 KiB per
/// datagram of a dump.
const RECV_BUF: usize = 64 * 1024;

/// Receive buffer asked for the notification socket (best effort: capped at
/// `net.core.rmem_max`). An overflow costs a full [`NextHops::resync`], not correctness.
const WATCH_RCVBUF: usize = 1 << 20;

fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut at = &mut *buf;
        // MSG_TRUNC: netlink returns the datagram's real length, so truncation shows.
        match socket.recv(&mut at, libc::MSG_TRUNC) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The netlink messages in one datagram, each as (header, whole message bytes). Stops at the
/// first that does not fit.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (NetlinkBuffer<&[u8]>, &[u8])> {
    core::iter::from_fn(move || {
        let msg = NetlinkBuffer::new_checked(buf).ok()?;
        let len = msg.length() as usize;
        let (this, rest) = buf.split_at(len);
        buf = rest
            .get(len.next_multiple_of(4) - len..)
            .unwrap_or_default();
        Some((NetlinkBuffer::new(this), this))
    })
}

/// A neighbour message's entry, if it is an IPv4 or IPv6 one (not a bridge FDB entry, not a
/// proxy entry).
fn neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    if m.header.flags.contains(NeighbourFlags::Proxy) {
        return None;
    }
    let mut address = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                address = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                address = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: m.header.ifindex,
        address: address?,
        mac,
    })
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The route in the kernel's answer to a lookup of `dst`.
fn route(dst: IpAddr, m: &RouteMessage) -> Option<Route> {
    let mut next_hop = None;
    let mut ifindex = None;
    let mut source = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Gateway(g) => next_hop = route_address(g),
            // An IPv4 route through an IPv6 gateway (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet(a)) => next_hop = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => next_hop = Some(IpAddr::V6(*a)),
            RouteAttribute::PrefSource(s) => source = route_address(s),
            _ => {}
        }
    }
    Some(Route {
        next_hop: next_hop.unwrap_or(dst),
        ifindex: ifindex?,
        source,
    })
}

/// The `RTM_GETROUTE` request for `dst` (what `ip route get` sends).
fn route_request(dst: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst);
    m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    m
}

/// The changes announced in one datagram of notifications. A neighbour message that cannot be
/// read is reported as [`Change::Lost`] (everything is read again).
pub fn parse_notifications(buf: &[u8], changes: &mut Vec<Change>) {
    for (msg, _) in messages(buf) {
        let kind = msg.message_type();
        match kind {
            libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => {
                let payload = msg.payload();
                // Only the ARP and ND tables: the group carries bridge FDB entries too.
                let Some(&f) = payload.first() else {
                    continue;
                };
                if f != libc::AF_INET as u8 && f != libc::AF_INET6 as u8 {
                    continue;
                }
                match NeighbourMessage::parse(payload) {
                    Ok(m) => {
                        if let Some(mut n) = neighbour(&m) {
                            if kind == libc::RTM_DELNEIGH {
                                n.mac = None;
                            }
                            changes.push(Change::Neighbour(n));
                        }
                    }
                    Err(_) => changes.push(Change::Lost),
                }
            }
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => changes.push(Change::Routes),
            NLMSG_OVERRUN => changes.push(Change::Lost),
            _ => {}
        }
    }
}

/// An rtnetlink socket for requests: neighbour and address dumps, route lookups. Blocking: the
/// kernel answers a request while it is sent, and the rest of a dump in the reads that follow.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens the socket.
    ///
    /// # Errors
    /// The socket could not be created or bound.
    pub fn open() -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::new("rtnetlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::new("rtnetlink socket: bind", e))?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends `message` with `flags` (beside `NLM_F_REQUEST`) and passes each answer to `each`,
    /// until the dump's end (`NLM_F_DUMP`) or, for a plain request, the first answer or
    /// acknowledgement.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &dyn Fn() -> String,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket
            .send_to(&out, &SocketAddr::new(0, 0), 0)
            .map_err(|e| Error::new(format!("{}: sending the request", what()), e))?;
        loop {
            let n = recv(&self.socket, &mut self.buf)
                .map_err(|e| Error::new(format!("{}: reading the answer", what()), e))?;
            if n > self.buf.len() {
                return Err(Error::msg(format!(
                    "{}: answer of {n} bytes truncated",
                    what()
                )));
            }
            for (header, bytes) in messages(&self.buf[..n]) {
                if header.sequence_number() != seq {
                    continue; // an answer to an earlier request that failed half way
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes);
                match parsed.map(|m| m.payload) {
                    Ok(NetlinkPayload::Done(_)) => return Ok(()),
                    Ok(NetlinkPayload::Error(e)) => {
                        return match e.code {
                            None => Ok(()),
                            Some(_) => Err(Error::new(what(), e.to_io())),
                        };
                    }
                    Ok(NetlinkPayload::InnerMessage(m)) => {
                        each(m);
                        if !dump {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    // One entry of a dump we cannot read is skipped; a lone answer is needed.
                    Err(e) if !dump => {
                        return Err(Error::new(format!("{}: bad answer", what()), e));
                    }
                    Err(_) => {}
                }
            }
        }
    }

    /// Sends `RTM_SETLINK` with `link` and waits for the kernel's acknowledgement.
    ///
    /// # Errors
    /// The kernel refused (its error), or the request failed.
    pub fn set_link(&mut self, link: LinkMessage) -> Result<()> {
        let index = link.header.index;
        self.request(
            RouteNetlinkMessage::SetLink(link),
            NLM_F_ACK,
            &|| format!("setting link {index}"),
            |_| {},
        )
    }

    /// Every entry of the IPv4 and IPv6 neighbour tables, on every interface.
    ///
    /// # Errors
    /// The dump failed.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let mut table = Vec::new();
        self.request(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
            &|| "neighbour table dump".to_string(),
            |m| {
                if let RouteNetlinkMessage::NewNeighbour(m) = m
                    && let Some(n) = neighbour(&m)
                {
                    table.push(n);
                }
            },
        )?;
        Ok(table)
    }

    /// The route the kernel would take to `dst` (`ip route get`).
    ///
    /// # Errors
    /// No route (the kernel's error: network unreachable, ...), or the request failed.
    pub fn route(&mut self, dst: IpAddr) -> Result<Route> {
        let mut found = None;
        let what = || format!("route to {dst}");
        self.request(
            RouteNetlinkMessage::GetRoute(route_request(dst)),
            0,
            &what,
            |m| {
                if let RouteNetlinkMessage::NewRoute(m) = m {
                    found = route(dst, &m);
                }
            },
        )?;
        found.ok_or_else(|| Error::msg(format!("{}: no output interface in the answer", what())))
    }

    /// The addresses of interface `ifindex`, IPv4 first, each family in the kernel's order
    /// (the primary address first).
    ///
    /// # Errors
    /// The dump failed.
    pub fn addresses(&mut self, ifindex: u32) -> Result<Vec<IpAddr>> {
        let mut all = Vec::new();
        self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            &|| "address dump".to_string(),
            |m| {
                let RouteNetlinkMessage::NewAddress(m) = m else {
                    return;
                };
                if m.header.index != ifindex {
                    return;
                }
                // IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on a
                // point-to-point link); IPv6 has IFA_ADDRESS only.
                let mut local = None;
                let mut address = None;
                for a in &m.attributes {
                    match a {
                        AddressAttribute::Local(a) => local = Some(*a),
                        AddressAttribute::Address(a) => address = Some(*a),
                        _ => {}
                    }
                }
                if let Some(a) = local.or(address) {
                    all.push(a);
                }
            },
        )?;
        all.sort_by_key(|a| a.is_ipv6()); // stable: the kernel's order within a family
        Ok(all)
    }
}

/// A socket subscribed to the kernel's neighbour and route notifications (`RTNLGRP_NEIGH`,
/// `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`), non-blocking: [`Watch::read`] takes what is
/// pending and returns.
pub struct Watch {
    socket: Socket,
    buf: Vec<u8>,
}

impl Watch {
    /// Opens and subscribes the socket.
    ///
    /// # Errors
    /// The socket could not be created, bound or subscribed.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| Error::new("rtnetlink notification socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::new("rtnetlink notification socket: bind", e))?;
        for (group, name) in [
            (libc::RTNLGRP_NEIGH, "RTNLGRP_NEIGH"),
            (libc::RTNLGRP_IPV4_ROUTE, "RTNLGRP_IPV4_ROUTE"),
            (libc::RTNLGRP_IPV6_ROUTE, "RTNLGRP_IPV6_ROUTE"),
        ] {
            socket.add_membership(group).map_err(|e| {
                Error::new(format!("rtnetlink notification socket: joining {name}"), e)
            })?;
        }
        // Best effort (capped at net.core.rmem_max): an overflow only costs a full read.
        let _ = socket.set_rx_buf_sz(WATCH_RCVBUF);
        socket
            .set_non_blocking(true)
            .map_err(|e| Error::new("rtnetlink notification socket: O_NONBLOCK", e))?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Appends the changes pending on the socket to `changes`, without blocking. An overflow of
    /// the socket's buffer is reported as [`Change::Lost`].
    ///
    /// # Errors
    /// Reading failed otherwise (the changes read before are kept in `changes`).
    pub fn read(&mut self, changes: &mut Vec<Change>) -> Result<()> {
        loop {
            match recv(&self.socket, &mut self.buf) {
                Ok(n) if n > self.buf.len() => changes.push(Change::Lost),
                Ok(n) => parse_notifications(&self.buf[..n], changes),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changes.push(Change::Lost),
                Err(e) => return Err(Error::new("rtnetlink notifications", e)),
            }
        }
    }
}

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// The neighbour tables and the peers' routes, and what follows from them: the state of
/// [`NextHops`] without its sockets.
#[derive(Debug, Default)]
struct Tables {
    inner: u32,
    peers: Vec<IpAddr>,
    routes: HashMap<IpAddr, Route>,
    /// Valid entries only, per interface.
    neighbours: HashMap<u32, HashMap<IpAddr, Mac>>,
}

impl Tables {
    /// Applies one neighbour change; whether the inner interface's table changed.
    fn apply(&mut self, n: Neighbour) -> bool {
        let table = self.neighbours.entry(n.ifindex).or_default();
        let changed = match n.mac {
            Some(mac) => table.insert(n.address, mac) != Some(mac),
            None => table.remove(&n.address).is_some(),
        };
        changed && n.ifindex == self.inner
    }

    /// Replaces every table; whether the inner interface's changed.
    fn replace(&mut self, entries: &[Neighbour]) -> bool {
        let mut neighbours: HashMap<u32, HashMap<IpAddr, Mac>> = HashMap::new();
        for n in entries {
            if let Some(mac) = n.mac {
                neighbours
                    .entry(n.ifindex)
                    .or_default()
                    .insert(n.address, mac);
            }
        }
        let old = std::mem::replace(&mut self.neighbours, neighbours);
        old.get(&self.inner) != self.neighbours.get(&self.inner)
    }

    fn peer_mac(&self, peer: IpAddr) -> Option<Mac> {
        let r = self.routes.get(&peer)?;
        self.neighbours.get(&r.ifindex)?.get(&r.next_hop).copied()
    }

    fn peer_macs(&self) -> Vec<Option<Mac>> {
        self.peers.iter().map(|&p| self.peer_mac(p)).collect()
    }
}

/// What the gateway's control thread knows of next hops: the inner interface's neighbours, and
/// each peer's route (next hop, output interface) and the next hop's MAC. Read in full by
/// [`NextHops::new`] and [`NextHops::resync`], kept current in between by
/// [`NextHops::update`] from the kernel's notifications: a neighbour change is applied as it
/// comes, a route change looks every peer's route up again, lost notifications read everything
/// again. No request blocks for long (the kernel answers rtnetlink requests at once) and
/// [`NextHops::update`] does not block at all.
pub struct NextHops {
    rtnl: Rtnl,
    watch: Watch,
    tables: Tables,
    changes: Vec<Change>,
}

impl NextHops {
    /// Subscribes to the notifications, then reads the neighbour tables and the route to each
    /// of `peers`.
    ///
    /// # Errors
    /// No interface `inner`, or a socket or the first reading failed.
    pub fn new(inner: &str, peers: impl IntoIterator<Item = IpAddr>) -> Result<Self> {
        let mut peers: Vec<IpAddr> = peers.into_iter().collect();
        peers.sort_unstable();
        peers.dedup();
        let mut hops = Self {
            // Subscribed before the first reading, so no change falls in between.
            watch: Watch::open()?,
            rtnl: Rtnl::open()?,
            tables: Tables {
                inner: ifindex(inner)?,
                peers,
                ..Tables::default()
            },
            changes: Vec::new(),
        };
        hops.resync()?;
        Ok(hops)
    }

    /// Follows `peers` from now on instead of the peers given so far (a reload added or
    /// removed some), looking their routes up at once.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = IpAddr>) {
        let mut peers: Vec<IpAddr> = peers.into_iter().collect();
        peers.sort_unstable();
        peers.dedup();
        self.tables.routes.retain(|p, _| peers.contains(p));
        self.tables.peers = peers;
        self.look_up_routes();
    }

    /// Applies the pending notifications, without blocking. Whether anything the gateway uses
    /// changed: the inner interface's neighbours, or a peer's next-hop MAC.
    ///
    /// # Errors
    /// Reading the notifications, or the full reading that lost ones call for, failed (what
    /// could be read is applied).
    pub fn update(&mut self) -> Result<bool> {
        self.changes.clear();
        let read = self.watch.read(&mut self.changes);
        if self.changes.is_empty() {
            return read.map(|()| false);
        }
        let before = self.tables.peer_macs();
        let mut inner = false;
        let mut routes = false;
        let mut lost = read.is_err();
        for &c in &self.changes {
            match c {
                Change::Neighbour(n) => inner |= self.tables.apply(n),
                Change::Routes => routes = true,
                Change::Lost => lost = true,
            }
        }
        if lost {
            let resynced = self
                .resync()
                .map(|c| c || inner || self.tables.peer_macs() != before);
            return read.and(resynced);
        }
        if routes {
            self.look_up_routes();
        }
        read?;
        Ok(inner || self.tables.peer_macs() != before)
    }

    /// Reads the neighbour tables and every peer's route again (the backstop against anything
    /// notifications missed). Whether anything the gateway uses changed.
    ///
    /// # Errors
    /// The neighbour dump failed (the tables stay as they were).
    pub fn resync(&mut self) -> Result<bool> {
        // Notifications pending now are older than the dump: drop them. Those that arrive
        // during the dump are newer and are applied after it by `update`.
        self.changes.clear();
        let _ = self.watch.read(&mut self.changes);
        self.changes.clear();
        let before = self.tables.peer_macs();
        let entries = self.rtnl.neighbours()?;
        let inner = self.tables.replace(&entries);
        self.look_up_routes();
        Ok(inner || self.tables.peer_macs() != before)
    }

    /// Looks every peer's route up; a peer without one has none in the tables.
    fn look_up_routes(&mut self) {
        for i in 0..self.tables.peers.len() {
            let peer = self.tables.peers[i];
            match self.rtnl.route(peer) {
                Ok(r) => {
                    self.tables.routes.insert(peer, r);
                }
                Err(_) => {
                    self.tables.routes.remove(&peer);
                }
            }
        }
    }

    /// Whether the kernel has a route to `peer` (one of the peers followed): a peer behind a
    /// link that went down has none until it comes up again.
    #[must_use]
    pub fn reachable(&self, peer: IpAddr) -> bool {
        self.tables.routes.contains_key(&peer)
    }

    /// The inner interface's neighbours (valid entries: IP → MAC).
    #[must_use]
    pub fn inner_neighbours(&self) -> HashMap<IpAddr, Mac> {
        self.tables
            .neighbours
            .get(&self.tables.inner)
            .cloned()
            .unwrap_or_default()
    }

    /// The MAC of the next hop towards `peer`, if it has a route and the next hop is resolved.
    #[must_use]
    pub fn peer_mac(&self, peer: IpAddr) -> Option<Mac> {
        self.tables.peer_mac(peer)
    }

    /// The route towards `peer`, if it has one.
    #[must_use]
    pub fn route(&self, peer: IpAddr) -> Option<Route> {
        self.tables.routes.get(&peer).copied()
    }

    /// The notification socket (readable when a change is pending), for a caller that waits in
    /// `poll`.
    #[must_use]
    pub fn watch_fd(&self) -> BorrowedFd<'_> {
        self.watch.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use netlink_packet_core::Emitable;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    /// A netlink message as the kernel lays it out: nlmsghdr, payload, padding.
    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]); // flags, sequence, port
        m.extend_from_slice(payload);
        pad(&mut m);
        m
    }

    /// An rtattr.
    fn rta(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&(4 + data.len() as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        pad(&mut a);
        a
    }

    /// struct ndmsg + NDA_DST (+ NDA_LLADDR) + NDA_CACHEINFO.
    fn ndmsg(
        family: u8,
        ifindex: u32,
        state: u16,
        flags: u8,
        dst: &[u8],
        mac: Option<Mac>,
    ) -> Vec<u8> {
        let mut m = vec![family, 0, 0, 0];
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&state.to_ne_bytes());
        m.extend_from_slice(&[flags, 1]); // flags, RTN_UNICAST
        m.extend(rta(1, dst));
        if let Some(mac) = mac {
            m.extend(rta(2, &mac));
        }
        m.extend(rta(3, &[0; 16]));
        m
    }

    /// struct rtmsg (a route lookup's answer) with the attributes `attrs`.
    fn rtmsg(family: u8, dst_len: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        // family, dst_len, src_len, tos, table main, protocol unspec, scope universe, unicast;
        // flags RTM_F_CLONED.
        let mut m = vec![family, dst_len, 0, 0, 254, 0, 0, 1];
        m.extend_from_slice(&0x200u32.to_ne_bytes());
        for a in attrs {
            m.extend_from_slice(a);
        }
        m
    }

    const MAC: Mac = [2, 0, 0, 0, 0, 2];
    const REACHABLE: u16 = 0x02;
    const INCOMPLETE: u16 = 0x01;
    const NTF_PROXY: u8 = 0x08;
    const AF_INET: u8 = libc::AF_INET as u8;
    const AF_INET6: u8 = libc::AF_INET6 as u8;
    const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;

    #[test]
    fn parses_notifications() {
        let v6 = ip("fd00::2");
        let IpAddr::V6(v6b) = v6 else { unreachable!() };
        let mut datagram = Vec::new();
        datagram.extend(nlmsg(
            libc::RTM_NEWNEIGH,
            &ndmsg(AF_INET, 3, REACHABLE, 0, &[10, 0, 0, 2], Some(MAC)),
        ));
        datagram.extend(nlmsg(
            libc::RTM_NEWNEIGH,
            &ndmsg(AF_INET6, 3, INCOMPLETE, 0, &v6b.octets(), None),
        ));
        // A removed entry still carries its address: reported without a MAC.
        datagram.extend(nlmsg(
            libc::RTM_DELNEIGH,
            &ndmsg(AF_INET, 4, REACHABLE, 0, &[192, 0, 2, 9], Some(MAC)),
        ));
        // Bridge FDB and proxy entries, link changes: not ours.
        datagram.extend(nlmsg(
            libc::RTM_NEWNEIGH,
            &ndmsg(AF_BRIDGE, 3, REACHABLE, 0, &MAC, None),
        ));
        datagram.extend(nlmsg(
            libc::RTM_NEWNEIGH,
            &ndmsg(AF_INET, 3, REACHABLE, NTF_PROXY, &[10, 0, 0, 7], None),
        ));
        datagram.extend(nlmsg(libc::RTM_NEWLINK, &[0; 16]));
        datagram.extend(nlmsg(libc::RTM_DELROUTE, &rtmsg(AF_INET, 24, &[])));
        // A truncated last message is ignored.
        let mut cut = nlmsg(libc::RTM_NEWROUTE, &rtmsg(AF_INET, 24, &[]));
        cut.truncate(20);
        datagram.extend(cut);
        let mut changes = Vec::new();
        parse_notifications(&datagram, &mut changes);
        assert_eq!(
            changes,
            [
                Change::Neighbour(Neighbour {
                    ifindex: 3,
                    address: ip("10.0.0.2"),
                    mac: Some(MAC)
                }),
                Change::Neighbour(Neighbour {
                    ifindex: 3,
                    address: v6,
                    mac: None
                }),
                Change::Neighbour(Neighbour {
                    ifindex: 4,
                    address: ip("192.0.2.9"),
                    mac: None
                }),
                Change::Routes,
            ]
        );
    }

    #[test]
    fn an_unreadable_neighbour_message_asks_for_a_full_read() {
        // NDA_DST of 5 bytes: not an IPv4 address.
        let mut m = vec![AF_INET, 0, 0, 0];
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&REACHABLE.to_ne_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend(rta(1, &[10, 0, 0, 2, 9]));
        let mut changes = Vec::new();
        parse_notifications(&nlmsg(libc::RTM_NEWNEIGH, &m), &mut changes);
        assert_eq!(changes, [Change::Lost]);
    }

    #[test]
    fn parses_route_answers() {
        let dst = ip("192.0.2.9");
        let answer = rtmsg(
            AF_INET,
            32,
            &[
                rta(15, &254u32.to_ne_bytes()), // RTA_TABLE
                rta(1, &[192, 0, 2, 9]),        // RTA_DST
                rta(4, &2u32.to_ne_bytes()),    // RTA_OIF
                rta(5, &[192, 0, 2, 254]),      // RTA_GATEWAY
                rta(7, &[192, 0, 2, 1]),        // RTA_PREFSRC
                rta(25, &0u32.to_ne_bytes()),   // RTA_UID
                rta(12, &[0; 32]),              // RTA_CACHEINFO
            ],
        );
        let m = RouteMessage::parse(&answer).expect("route message");
        assert_eq!(
            route(dst, &m),
            Some(Route {
                next_hop: ip("192.0.2.254"),
                ifindex: 2,
                source: Some(ip("192.0.2.1")),
            })
        );
        // On link: the destination is the next hop.
        let answer = rtmsg(
            AF_INET,
            32,
            &[rta(1, &[192, 0, 2, 9]), rta(4, &2u32.to_ne_bytes())],
        );
        let m = RouteMessage::parse(&answer).expect("route message");
        assert_eq!(
            route(dst, &m),
            Some(Route {
                next_hop: dst,
                ifindex: 2,
                source: None,
            })
        );
        // IPv4 through an IPv6 gateway (RTA_VIA: family, address).
        let gw = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let mut via = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        via.extend_from_slice(&gw.octets());
        let answer = rtmsg(AF_INET, 32, &[rta(4, &5u32.to_ne_bytes()), rta(18, &via)]);
        let m = RouteMessage::parse(&answer).expect("route message");
        assert_eq!(route(dst, &m).map(|r| r.next_hop), Some(IpAddr::V6(gw)));
        // No output interface: no route.
        let m = RouteMessage::parse(&rtmsg(AF_INET, 32, &[])).expect("route message");
        assert_eq!(route(dst, &m), None);
    }

    #[test]
    fn route_request_is_what_ip_route_get_sends() {
        for (dst, family, len, bytes) in [
            (ip("10.0.0.2"), AF_INET, 32, vec![10, 0, 0, 2]),
            (ip("fd00::2"), AF_INET6, 128, ip_octets("fd00::2")),
        ] {
            let m = route_request(dst);
            let mut out = vec![0; m.buffer_len()];
            m.emit(&mut out);
            let mut want = vec![family, len, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            want.extend(rta(1, &bytes));
            assert_eq!(out, want, "{dst}");
        }
    }

    fn ip_octets(s: &str) -> Vec<u8> {
        match ip(s) {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    #[test]
    fn tables_follow_neighbour_changes() {
        let (peer, other) = (ip("198.51.100.7"), ip("192.0.2.9"));
        let gw = ip("192.0.2.254");
        let mut t = Tables {
            inner: 3,
            peers: vec![peer, other],
            ..Tables::default()
        };
        t.routes.insert(
            peer,
            Route {
                next_hop: gw,
                ifindex: 2,
                source: None,
            },
        );
        assert_eq!(t.peer_macs(), [None, None]);
        let n = |ifindex, address, mac| Neighbour {
            ifindex,
            address,
            mac,
        };
        // The gateway resolves on the outer interface: the peer behind it has its MAC.
        assert!(!t.apply(n(2, gw, Some(MAC))));
        assert_eq!(t.peer_macs(), [Some(MAC), None]);
        // The same address on another interface is another entry.
        t.apply(n(5, gw, Some([9; 6])));
        assert_eq!(t.peer_mac(peer), Some(MAC));
        // Inner interface: reported when it changes, not when it stays the same.
        assert!(t.apply(n(3, ip("10.0.0.2"), Some(MAC))));
        assert!(!t.apply(n(3, ip("10.0.0.2"), Some(MAC))));
        assert!(t.apply(n(3, ip("10.0.0.2"), Some([3; 6]))));
        assert!(t.apply(n(3, ip("10.0.0.2"), None)));
        assert!(!t.apply(n(3, ip("10.0.0.2"), None)));
        // The gateway's entry goes: the peer is unresolved again.
        t.apply(n(2, gw, None));
        assert_eq!(t.peer_macs(), [None, None]);
        // A full read replaces everything.
        assert!(t.replace(&[
            n(2, gw, Some(MAC)),
            n(3, ip("10.0.0.3"), Some(MAC)),
            n(3, ip("10.0.0.4"), None),
        ]));
        assert_eq!(t.peer_mac(peer), Some(MAC));
        assert_eq!(t.neighbours[&3].len(), 1);
        assert!(!t.replace(&[n(3, ip("10.0.0.3"), Some(MAC))]));
        assert_eq!(t.peer_mac(peer), None);
    }

    /// The real kernel, through loopback (needs no privilege).
    #[test]
    fn reads_the_kernel() {
        let mut rtnl = Rtnl::open().expect("rtnetlink");
        let lo = ifindex("lo").expect("lo");
        let r = rtnl.route(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("route");
        assert_eq!(
            (r.next_hop, r.ifindex),
            (IpAddr::V4(Ipv4Addr::LOCALHOST), lo)
        );
        assert!(
            rtnl.addresses(lo)
                .expect("addresses")
                .contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        rtnl.neighbours().expect("neighbours");
        assert!(ifindex("no-such-if0").is_err());
        let mut hops = NextHops::new("lo", [IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("next hops");
        assert_eq!(
            hops.route(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .map(|r| r.ifindex),
            Some(lo)
        );
        hops.update().expect("update");
        hops.resync().expect("resync");
    }
}
