//! The control-plane API's "keys changed" event against the fingerprint scan it replaced: a
//! server and clients behind [`Endpoint`]s rotate, fall back and restart over lossy links, and
//! after every step (1) every peer whose keys a data plane shows (the generation in each slot
//! and the one transmitted with) changed is named by an [`Event::KeysChanged`] before any
//! transmit is taken, and (2) the data plane updated with exactly those peers equals a fresh
//! one.

use pktcrypt_core::control::{
    ClientConfig, Endpoint, Event, KeyClient, KeyServer, SeededRandom, ServerConfig,
};
use pktcrypt_core::{DataPlane, Engine, PeerId, Slot, Suite, Time};
use pktcrypt_tests::sim::{Dice, init_key};
use std::collections::BTreeSet;
use std::time::Duration;

type Fingerprint = Vec<(u32, [Option<(u64, u32)>; 3], Option<u64>)>;

fn fingerprint(e: &Engine) -> Fingerprint {
    e.peers()
        .map(|p| {
            let g = |s| e.generation(p, s).map(|g| (g.number, g.spi.get()));
            (
                p.0,
                [g(Slot::Init), g(Slot::Newest), g(Slot::Previous)],
                e.tx_generation(p).map(|g| g.number),
            )
        })
        .collect()
}

fn changed(before: &Fingerprint, after: &Fingerprint) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for (p, slots, tx) in before {
        if !after
            .iter()
            .any(|(q, s, t)| q == p && s == slots && t == tx)
        {
            out.insert(*p);
        }
    }
    for (p, slots, tx) in after {
        if !before
            .iter()
            .any(|(q, s, t)| q == p && s == slots && t == tx)
        {
            out.insert(*p);
        }
    }
    out
}

fn view(plane: &DataPlane, peers: &[PeerId]) -> Vec<String> {
    peers
        .iter()
        .map(|p| {
            format!(
                "{p:?} tx {:?} rx {:?}",
                plane.tx_generation(*p),
                plane.rx_generations(*p)
            )
        })
        .collect()
}

/// One endpoint with the data plane a driver would publish.
struct Driven {
    endpoint: Endpoint,
    plane: DataPlane,
    seen: Fingerprint,
    updates: u64,
}

impl Driven {
    fn new(mut endpoint: Endpoint) -> Self {
        let plane = endpoint.data_plane().expect("plane");
        let seen = fingerprint(endpoint.engine());
        Self {
            endpoint,
            plane,
            seen,
            updates: 0,
        }
    }

    /// Steps 3 and 4 of the call order, checked; the transmits.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let now = fingerprint(self.endpoint.engine());
        let mut reported = BTreeSet::new();
        let mut first = true;
        while let Some(e) = self.endpoint.poll_event() {
            if let Event::KeysChanged { peers } = e {
                assert!(first, "KeysChanged after another event");
                let unique: BTreeSet<u32> = peers.iter().map(|p| p.0).collect();
                assert_eq!(unique.len(), peers.len(), "a peer named twice");
                reported.extend(unique);
                self.plane = self
                    .endpoint
                    .update_data_plane(&self.plane, &peers)
                    .expect("update");
                self.updates += 1;
            }
            first = false;
        }
        let missed: Vec<u32> = changed(&self.seen, &now)
            .difference(&reported)
            .copied()
            .collect();
        assert!(missed.is_empty(), "keys changed unreported for {missed:?}");
        self.seen = now;
        let peers: Vec<PeerId> = self.endpoint.engine().peers().collect();
        let fresh = self.endpoint.data_plane().expect("plane");
        assert_eq!(view(&self.plane, &peers), view(&fresh, &peers));
        let mut out = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            out.push(t.contents);
        }
        out
    }
}

#[test]
fn keys_changed_names_every_peer_whose_keys_changed() {
    const N: usize = 4;
    let mut sc = ServerConfig::new();
    sc.rekey_interval = Some(Duration::from_millis(700));
    sc.distribution_retry = Duration::from_millis(50);
    let mut cc = ClientConfig::new();
    cc.request_timeout = Duration::from_millis(60);
    cc.max_retries = 3;
    cc.hello_interval = Duration::from_millis(300);
    let mut now = Time::ZERO;
    let mut server = KeyServer::new(sc, Box::new(SeededRandom::new(7))).expect("server");
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..N {
        let init = init_key(i, Suite::Aes128Gcm);
        peers.push(server.add_client(&init, None, now).expect("add"));
        let c = KeyClient::new(
            cc.clone(),
            &init,
            Box::new(SeededRandom::new(100 + i as u64)),
            now,
        )
        .expect("client");
        clients.push(Driven::new(Endpoint::from(c)));
    }
    let mut server = Driven::new(Endpoint::from(server));
    let mut dice = Dice::new(3);
    let step = Duration::from_millis(10);
    let mut to_server: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut to_clients: Vec<(usize, Vec<u8>)> = Vec::new();
    for round in 0..3000u32 {
        now += step;
        // A client restarts now and then (a new machine from its init key).
        if round % 700 == 350 {
            let i = (round as usize / 700) % N;
            let c = KeyClient::new(
                cc.clone(),
                &init_key(i, Suite::Aes128Gcm),
                Box::new(SeededRandom::new(1000 + u64::from(round))),
                now,
            )
            .expect("client");
            clients[i] = Driven::new(Endpoint::from(c));
        }
        for (i, mut bytes) in std::mem::take(&mut to_server) {
            let from = Some(std::net::SocketAddr::from(([192, 0, 2, i as u8 + 1], 4500)));
            let _ = server.endpoint.handle_datagram(now, from, &mut bytes);
        }
        for (i, mut bytes) in std::mem::take(&mut to_clients) {
            let _ = clients[i].endpoint.handle_datagram(now, None, &mut bytes);
        }
        if server.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            server.endpoint.handle_timeout(now);
        }
        for c in &mut clients {
            if c.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                c.endpoint.handle_timeout(now);
            }
        }
        // Data from each client now and then: proves generations to the server.
        for (i, c) in clients.iter_mut().enumerate() {
            if round % 5 == 0 {
                let mut buf = vec![0u8; 200];
                buf[8] = 0x45;
                if let Ok(n) = c.endpoint.seal(
                    now,
                    PeerId(0),
                    &mut buf,
                    40,
                    pktcrypt_core::wire::NextHeader::Ipv4,
                ) {
                    buf.truncate(n);
                    to_server.push((i, buf));
                }
            }
        }
        // 20 % loss either way.
        for (i, c) in clients.iter_mut().enumerate() {
            for t in c.drain() {
                if !dice.chance(0.2) {
                    to_server.push((i, t));
                }
            }
        }
        for t in server.drain() {
            // Control for client i travels under its SPIs; route by trying each (the wrong
            // ones drop it as an unknown SPI, which is what a real client would do too).
            if dice.chance(0.2) {
                continue;
            }
            for i in 0..N {
                to_clients.push((i, t.clone()));
            }
        }
    }
    // It rotated many times, and every endpoint reported through events.
    assert!(server.updates > 20, "server updates {}", server.updates);
    for c in &clients {
        assert!(c.updates > 0);
    }
    let gens: Vec<u64> = clients.iter().map(|c| c.endpoint.generation()).collect();
    assert!(gens.iter().all(|g| *g > 3), "generations {gens:?}");
}
