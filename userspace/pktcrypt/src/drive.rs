//! The one control loop: every daemon role (the UDP roles of `driver.rs`, the gateway and the
//! gateway's group controller of `up.rs`) runs its [`Endpoint`] through [`drive`], in the call
//! order of [`pktcrypt_core::control::endpoint`]. What differs between them (where datagrams
//! come from, where keys are published, what is printed) is an [`Io`].

use pktcrypt_core::control::{Endpoint, Event, GroupEvent, Transmit};
use pktcrypt_core::{PeerId, Time};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(crate) use pktcrypt_os::now;

/// What a driver plugs into [`drive`].
pub(crate) trait Io {
    /// Step 1: waits at most `wait` for input and hands whatever arrived to `endpoint`.
    /// `Ok(false)` stops the loop (the input is gone).
    fn receive(&mut self, endpoint: &mut Endpoint, wait: Duration) -> Result<bool, String>;
    /// The driver's own next deadline (its tick, traffic, status line).
    fn next_wake(&self) -> Time;
    /// Step 2, the driver's part: whatever of its own is due at `now` (rekey triggers,
    /// synthetic traffic, next hops, evidence for retiring keys).
    fn tick(&mut self, endpoint: &mut Endpoint, now: Time) -> Result<(), String>;
    /// Step 3: the keys of `peers` changed; publish them (before anything is sent).
    fn keys_changed(&mut self, endpoint: &mut Endpoint, peers: &[PeerId]) -> Result<(), String>;
    /// Step 3: any other event (already logged when it is an error).
    fn event(&mut self, endpoint: &Endpoint, event: &Event);
    /// Step 4: sends one packet.
    fn send(&mut self, endpoint: &Endpoint, transmit: Transmit);
    /// After step 4: status lines, requests from the status socket.
    fn report(&mut self, endpoint: &mut Endpoint, now: Time) -> Result<(), String>;
    /// The name of a peer, for logs.
    fn peer_name(&self, endpoint: &Endpoint, peer: PeerId) -> Option<String>;
    /// The name of a group member by index (a controller's), for logs.
    fn member_name(&self, _endpoint: &Endpoint, _index: u16) -> Option<String> {
        None
    }
    /// The loop ended (a signal, or the input is gone).
    fn finish(&mut self, endpoint: &mut Endpoint);
}

/// Runs `endpoint` over `io` until `term` is set or the input is gone. `name` names the
/// daemon in logs.
///
/// # Errors
/// What `io` returns.
pub(crate) fn drive(
    endpoint: &mut Endpoint,
    io: &mut impl Io,
    name: &str,
    term: &AtomicBool,
) -> Result<(), String> {
    let result = run(endpoint, io, name, term);
    io.finish(endpoint);
    result
}

fn run(
    endpoint: &mut Endpoint,
    io: &mut impl Io,
    name: &str,
    term: &AtomicBool,
) -> Result<(), String> {
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let wake = endpoint
            .poll_timeout()
            .map_or(io.next_wake(), |p| p.min(io.next_wake()));
        if !io.receive(endpoint, wake.saturating_sub(t))? {
            break;
        }
        let t = now();
        if endpoint.poll_timeout().is_some_and(|p| p <= t) {
            endpoint.handle_timeout(t);
        }
        io.tick(endpoint, t)?;
        flush(endpoint, io, name)?;
        io.report(endpoint, t)?;
    }
    Ok(())
}

/// Steps 3 and 4: events (keys first), then transmits. Also after role-specific calls.
///
/// # Errors
/// What `io` returns for publishing keys.
pub(crate) fn flush(endpoint: &mut Endpoint, io: &mut impl Io, name: &str) -> Result<(), String> {
    while let Some(e) = endpoint.poll_event() {
        match &e {
            Event::KeysChanged { peers } => io.keys_changed(endpoint, peers)?,
            Event::DuplicateClient { peer, addrs } => {
                tracing::error!(
                    daemon = name,
                    client = io.peer_name(endpoint, *peer),
                    first = %addrs.0,
                    second = %addrs.1,
                    "two clients use this client's init key (a copied configuration? two \
                     gateways, or a client started twice): their handshakes keep resetting \
                     each other's keys"
                );
            }
            Event::Group(GroupEvent::Duplicate { member, addrs }) => {
                tracing::error!(
                    daemon = name,
                    member = io
                        .member_name(endpoint, *member)
                        .unwrap_or_else(|| format!("member {member}")),
                    first = %addrs.0,
                    second = %addrs.1,
                    "two gateways run as this member (its index and control key in two \
                     configurations): taken out of the group until re-admitted"
                );
            }
            _ => {}
        }
        if !matches!(e, Event::KeysChanged { .. }) {
            io.event(endpoint, &e);
        }
    }
    while let Some(t) = endpoint.poll_transmit() {
        io.send(endpoint, t);
    }
    Ok(())
}
