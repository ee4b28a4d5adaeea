//! `pktcrypt._native`: the PyO3 layer over `pktcrypt-core`. The typed, pythonic API is in
//! `python/pktcrypt/__init__.py`; this module stays thin.
//!
//! Bulk operations (`seal_many`, `open_many`) release the GIL while they run.

use pktcrypt_core::aead::Backend;
use pktcrypt_core::control::message::GroupPhase;
use pktcrypt_core::control::{
    ClientConfig, Endpoint as Core, Incoming, KeyClient, KeyServer, Machine, Random, ServerConfig,
};
use pktcrypt_core::control::{GroupConfig, GroupController, GroupMember, MemberState};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::wire::{TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
use pktcrypt_core::{
    DropReason, Generation, GenerationInfo, PeerId, Role, SealError, Secret, Slot, Spi, Suite,
    Time, keycode,
};
use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::time::Duration;

create_exception!(
    _native,
    PktcryptError,
    PyException,
    "Base class of every pktcrypt error."
);
create_exception!(
    _native,
    ConfigError,
    PktcryptError,
    "Invalid configuration (names the field)."
);
create_exception!(
    _native,
    InitKeyError,
    PktcryptError,
    "An init key code is invalid."
);
create_exception!(
    _native,
    RoleError,
    PktcryptError,
    "Not possible for this endpoint's role."
);
create_exception!(
    _native,
    SealError_,
    PktcryptError,
    "Sealing failed (e.g. sequence numbers exhausted)."
);
create_exception!(
    _native,
    DroppedError,
    PktcryptError,
    "A received packet was dropped; `.reason` says why."
);
create_exception!(
    _native,
    AuthenticationError,
    DroppedError,
    "The packet did not authenticate: forged or corrupted."
);
create_exception!(
    _native,
    ReplayError,
    DroppedError,
    "The packet was a replay or too old for the window."
);
create_exception!(
    _native,
    UnknownSpiError,
    DroppedError,
    "No key with this SPI is held."
);
create_exception!(
    _native,
    MalformedError,
    DroppedError,
    "The packet or control message is malformed."
);

use pktcrypt_os::{OsRandom, now_ns as boottime_ns};

fn time(ns: Option<u64>) -> Time {
    Duration::from_nanos(ns.unwrap_or_else(boottime_ns))
}

fn dropped_err(reason: DropReason) -> PyErr {
    let msg = reason.label();
    match reason {
        DropReason::AuthFailed => AuthenticationError::new_err(msg),
        DropReason::Replay | DropReason::TooOld => ReplayError::new_err(msg),
        DropReason::UnknownSpi => UnknownSpiError::new_err(msg),
        _ => MalformedError::new_err(msg),
    }
}

fn suite(name: &str) -> PyResult<Suite> {
    name.parse()
        .map_err(|e| ConfigError::new_err(format!("suite: {e}")))
}

fn bytes_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let buf: PyBuffer<u8> = PyBuffer::get(obj)?;
    buf.to_vec(py)
}

/// Seals one inner packet; shared by `seal` and `seal_many`.
fn seal_one(m: &mut Core, peer: u32, inner: &[u8], now: Time) -> Result<Vec<u8>, String> {
    let next = NextHeader::for_ip_packet(inner).ok_or("inner packet is not IPv4 or IPv6")?;
    let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + MAX_OVERHEAD];
    buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let r = m.seal(now, PeerId(peer), &mut buf, inner.len(), next);
    match r {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(SealError::UnknownPeer) => Err(format!("no peer {peer}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Seals one IP packet in transport mode (see `Endpoint.seal_transport`).
fn seal_transport_one(
    m: &mut Core,
    peer: u32,
    packet: &[u8],
    ports: UdpPorts,
    now: Time,
) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; packet.len() + TRANSPORT_OVERHEAD];
    buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + packet.len()].copy_from_slice(packet);
    match m.seal_transport(now, PeerId(peer), &mut buf, packet.len(), ports) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(SealError::UnknownPeer) => Err(format!("no peer {peer}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Outcome of opening one datagram, without Python objects (so it can run without the GIL).
enum Opened {
    Data {
        peer: u32,
        generation: u64,
        inner: Vec<u8>,
    },
    Control {
        peer: u32,
    },
    Dropped(DropReason),
}

fn open_one(m: &mut Core, mut buf: Vec<u8>, now: Time) -> Opened {
    let r = m.handle_datagram(now, None, &mut buf);
    match r {
        Incoming::Data {
            peer,
            packet,
            generation,
            ..
        } => Opened::Data {
            peer: peer.0,
            generation,
            inner: packet.to_vec(),
        },
        Incoming::Control { peer } => Opened::Control { peer: peer.0 },
        Incoming::Dropped(r) => Opened::Dropped(r),
    }
}

fn opened_to_py(py: Python<'_>, o: Opened) -> PyResult<Py<PyAny>> {
    match o {
        Opened::Data {
            peer,
            generation,
            inner,
        } => Ok(("data", peer, generation, PyBytes::new(py, &inner))
            .into_pyobject(py)?
            .into_any()
            .unbind()),
        Opened::Control { peer } => Ok(("control", peer, 0u64, PyBytes::new(py, b""))
            .into_pyobject(py)?
            .into_any()
            .unbind()),
        Opened::Dropped(r) => Err(dropped_err(r)),
    }
}

/// A key server (many peers) or a client (one server). See `pktcrypt.Endpoint`.
#[pyclass(module = "pktcrypt._native")]
struct Endpoint {
    machine: Option<Core>,
}

impl Endpoint {
    fn machine(&mut self) -> PyResult<&mut Core> {
        self.machine
            .as_mut()
            .ok_or_else(|| PktcryptError::new_err("the endpoint is closed"))
    }
}

#[pymethods]
impl Endpoint {
    #[new]
    #[pyo3(signature = (role, init_key, *, suite_name, derived, rekey_interval_ms, update_interval_ms,
        hello_interval_ms, request_timeout_ms, max_backoff_ms, max_retries, reorder_grace_ms,
        replay_window, backend, triggers=None, pfs="every-rekey", now_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        role: &str,
        init_key: Option<&str>,
        suite_name: &str,
        derived: bool,
        rekey_interval_ms: u64,
        update_interval_ms: u64,
        hello_interval_ms: u64,
        request_timeout_ms: u64,
        max_backoff_ms: u64,
        max_retries: u32,
        reorder_grace_ms: u64,
        replay_window: u32,
        backend: &str,
        triggers: Option<&Bound<'_, PyDict>>,
        pfs: &str,
        now_ns: Option<u64>,
    ) -> PyResult<Self> {
        let mut trig = pktcrypt_core::control::RekeyTriggers::for_suite(suite(suite_name)?, 65535);
        if let Some(t) = triggers {
            for (k, v) in t.iter() {
                let key: String = k.extract()?;
                let v: f64 = v.extract().map_err(|_| {
                    ConfigError::new_err(format!("triggers.{key}: expected a number"))
                })?;
                if v <= 0.0 {
                    return Err(ConfigError::new_err(format!(
                        "triggers.{key}: must be positive"
                    )));
                }
                match key.as_str() {
                    "packets_sealed" => trig.packets_sealed = v as u64,
                    "packets_opened" => trig.packets_opened = v as u64,
                    "packets_total" => trig.packets_total = v as u64,
                    "bytes" => trig.bytes = v as u64,
                    "auth_failures" => trig.auth_failures = v as u64,
                    "max_age" => trig.max_age = Some(Duration::from_secs_f64(v)),
                    other => {
                        return Err(ConfigError::new_err(format!(
                            "triggers: unknown trigger {other:?}"
                        )));
                    }
                }
            }
        }
        let backend = Backend::from_name(backend)
            .ok_or_else(|| ConfigError::new_err(format!("backend: unknown {backend:?}")))?;
        if !(64..=8192).contains(&replay_window) || !replay_window.is_multiple_of(64) {
            return Err(ConfigError::new_err(
                "replay_window: must be a multiple of 64 in 64..8192",
            ));
        }
        let pfs: pktcrypt_core::control::Pfs = pfs
            .parse()
            .map_err(|e| ConfigError::new_err(format!("pfs: {e}")))?;
        let engine = |r: Role| {
            let mut e = pktcrypt_core::EngineConfig::new(r);
            e.backend = backend;
            e.replay_window = replay_window;
            e
        };
        let now = time(now_ns);
        let machine = match role {
            "server" => {
                if init_key.is_some() {
                    return Err(RoleError::new_err(
                        "a server takes its clients' keys with add_peer(), not init_key",
                    ));
                }
                let mut c = ServerConfig::new();
                c.engine = engine(Role::KeyServer);
                c.suite = suite(suite_name)?;
                c.derived = derived;
                c.pfs = pfs;
                c.rekey_interval =
                    (rekey_interval_ms > 0).then(|| Duration::from_millis(rekey_interval_ms));
                c.reorder_grace = Duration::from_millis(reorder_grace_ms);
                c.triggers = trig;
                Core::from(
                    KeyServer::new(c, Box::new(OsRandom))
                        .map_err(|e| ConfigError::new_err(e.to_string()))?,
                )
            }
            "client" => {
                let key = init_key.ok_or_else(|| {
                    InitKeyError::new_err("init_key: a client needs its init key")
                })?;
                let key = keycode::decode(key)
                    .map_err(|e| InitKeyError::new_err(format!("init_key: {e}")))?;
                if hello_interval_ms == 0 {
                    return Err(ConfigError::new_err("hello_interval: must be positive"));
                }
                if request_timeout_ms == 0 {
                    return Err(ConfigError::new_err("request_timeout: must be positive"));
                }
                let mut c = ClientConfig::new();
                c.engine = engine(Role::Client);
                c.update_interval =
                    (update_interval_ms > 0).then(|| Duration::from_millis(update_interval_ms));
                c.hello_interval = Duration::from_millis(hello_interval_ms);
                c.request_timeout = Duration::from_millis(request_timeout_ms);
                c.max_backoff = Duration::from_millis(max_backoff_ms.max(request_timeout_ms));
                c.max_retries = max_retries;
                c.triggers = trig;
                Core::from(
                    KeyClient::new(c, &key, Box::new(OsRandom), now)
                        .map_err(|e| InitKeyError::new_err(format!("init_key: {e}")))?,
                )
            }
            other => return Err(ConfigError::new_err(format!("role: unknown {other:?}"))),
        };
        Ok(Self {
            machine: Some(machine),
        })
    }

    #[pyo3(signature = (init_key, now_ns=None))]
    fn add_peer(&mut self, init_key: &str, now_ns: Option<u64>) -> PyResult<u32> {
        let key = keycode::decode(init_key)
            .map_err(|e| InitKeyError::new_err(format!("init_key: {e}")))?;
        match self.machine()?.machine_mut() {
            Machine::Server(s) => s
                .add_client(&key, None, time(now_ns))
                .map(|p| p.0)
                .map_err(|e| InitKeyError::new_err(format!("init_key: {e}"))),
            _ => Err(RoleError::new_err("only a server has several peers")),
        }
    }

    #[pyo3(signature = (peer, inner, now_ns=None))]
    fn seal<'py>(
        &mut self,
        py: Python<'py>,
        peer: u32,
        inner: &Bound<'py, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = bytes_of(py, inner)?;
        let out =
            seal_one(self.machine()?, peer, &inner, time(now_ns)).map_err(SealError_::new_err)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Seals many packets with the GIL released.
    #[pyo3(signature = (peer, packets, now_ns=None))]
    fn seal_many<'py>(
        &mut self,
        py: Python<'py>,
        peer: u32,
        packets: &Bound<'py, PyList>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| bytes_of(py, &p))
            .collect::<PyResult<_>>()?;
        let now = time(now_ns);
        let machine = self.machine()?;
        let sealed: Result<Vec<Vec<u8>>, String> = py.detach(|| {
            inputs
                .iter()
                .map(|inner| seal_one(machine, peer, inner, now))
                .collect()
        });
        let sealed = sealed.map_err(SealError_::new_err)?;
        PyList::new(py, sealed.iter().map(|b| PyBytes::new(py, b)))
    }

    #[pyo3(signature = (datagram, now_ns=None))]
    fn open(
        &mut self,
        py: Python<'_>,
        datagram: &Bound<'_, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let buf = bytes_of(py, datagram)?;
        let o = open_one(self.machine()?, buf, time(now_ns));
        opened_to_py(py, o)
    }

    /// Opens many datagrams with the GIL released. Drops come back as exception objects in the
    /// list instead of being raised.
    #[pyo3(signature = (datagrams, now_ns=None))]
    fn open_many<'py>(
        &mut self,
        py: Python<'py>,
        datagrams: &Bound<'py, PyList>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs: Vec<Vec<u8>> = datagrams
            .iter()
            .map(|p| bytes_of(py, &p))
            .collect::<PyResult<_>>()?;
        let now = time(now_ns);
        let machine = self.machine()?;
        let results: Vec<Opened> = py.detach(|| {
            inputs
                .into_iter()
                .map(|b| open_one(machine, b, now))
                .collect()
        });
        let out = PyList::empty(py);
        for r in results {
            match opened_to_py(py, r) {
                Ok(v) => out.append(v)?,
                Err(e) => out.append(e.value(py))?,
            }
        }
        Ok(out)
    }

    /// Seals an IP packet in ESP transport mode inside UDP (see `pktcrypt.Endpoint`).
    #[pyo3(signature = (peer, packet, src_port=4500, dst_port=4500, now_ns=None))]
    fn seal_transport<'py>(
        &mut self,
        py: Python<'py>,
        peer: u32,
        packet: &Bound<'py, PyAny>,
        src_port: u16,
        dst_port: u16,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let packet = bytes_of(py, packet)?;
        let ports = UdpPorts {
            src: src_port,
            dst: dst_port,
        };
        let out = seal_transport_one(self.machine()?, peer, &packet, ports, time(now_ns))
            .map_err(SealError_::new_err)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Opens a received IP packet carrying ESP in UDP, in either mode: `(kind, peer,
    /// generation, data, next_header)`, `next_header` 0 but for data (4 or 41: tunnel mode,
    /// `data` the inner packet; else transport mode, `data` the restored IP packet).
    #[pyo3(signature = (packet, now_ns=None))]
    fn open_transport(
        &mut self,
        py: Python<'_>,
        packet: &Bound<'_, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let mut buf = bytes_of(py, packet)?;
        let r = self.machine()?.handle_transport(time(now_ns), &mut buf);
        match r {
            Incoming::Data {
                peer,
                packet,
                generation,
                next_header,
            } => Ok((
                "data",
                peer.0,
                generation,
                PyBytes::new(py, packet),
                next_header.value(),
            )
                .into_pyobject(py)?
                .into_any()
                .unbind()),
            Incoming::Control { peer } => Ok(("control", peer.0, 0u64, PyBytes::new(py, b""), 0u8)
                .into_pyobject(py)?
                .into_any()
                .unbind()),
            Incoming::Dropped(r) => Err(dropped_err(r)),
        }
    }

    fn poll_transmit<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(u32, Bound<'py, PyBytes>)>> {
        let t = self.machine()?.poll_transmit();
        Ok(t.map(|t| (t.peer.0, PyBytes::new(py, &t.contents))))
    }

    fn poll_timeout(&mut self) -> PyResult<Option<u64>> {
        let t = self.machine()?.poll_timeout();
        Ok(t.map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)))
    }

    #[pyo3(signature = (now_ns=None))]
    fn handle_timeout(&mut self, now_ns: Option<u64>) -> PyResult<()> {
        let now = time(now_ns);
        let m = self.machine()?;
        m.handle_timeout(now);
        // No events in the Python API (yet): drop them rather than let them pile up.
        while m.poll_event().is_some() {}
        Ok(())
    }

    /// Rekey on demand; returns how many rotations were asked for.
    #[pyo3(signature = (peer=None, now_ns=None))]
    fn rekey(&mut self, peer: Option<u32>, now_ns: Option<u64>) -> PyResult<usize> {
        let now = time(now_ns);
        let m = self.machine()?;
        let is_server = matches!(m.machine(), Machine::Server(_));
        if let Some(p) = peer
            && is_server
            && !m.engine().peers().any(|q| q == PeerId(p))
        {
            return Err(SealError_::new_err(format!("rekey: no peer {p}")));
        }
        let n = m.rekey(now, peer.filter(|_| is_server).map(PeerId));
        while m.poll_event().is_some() {}
        if n == 0 && (peer.is_some() || !is_server) {
            return Err(SealError_::new_err(
                "rekey: no generation yet: the init handshake has not completed",
            ));
        }
        Ok(n)
    }

    #[pyo3(signature = (peer=0))]
    fn status<'py>(&mut self, py: Python<'py>, peer: u32) -> PyResult<Bound<'py, PyDict>> {
        let m = self.machine()?;
        let (engine, id) = match m.machine() {
            Machine::Client(c) => (c.engine(), c.server()),
            _ => (m.engine(), PeerId(peer)),
        };
        let st = engine
            .peer_status(id)
            .ok_or_else(|| PktcryptError::new_err(format!("no peer {peer}")))?;
        let d = PyDict::new(py);
        let mut opened = 0u64;
        let mut failures = 0u64;
        let mut replays = 0u64;
        for sa in &st.sas {
            let key = match sa.slot {
                Slot::Init => "init",
                Slot::Newest => "newest",
                Slot::Previous => "previous",
            };
            d.set_item(format!("{key}_generation"), sa.info.number)?;
            d.set_item(format!("{key}_spi"), sa.info.spi.get())?;
            d.set_item(format!("{key}_suite"), sa.info.suite.name())?;
            d.set_item(format!("{key}_exchanged"), sa.exchanged)?;
            d.set_item(
                format!("{key}_installed_ns"),
                u64::try_from(sa.installed_at.as_nanos()).unwrap_or(u64::MAX),
            )?;
            if sa.transmitting {
                d.set_item("tx_generation", sa.info.number)?;
                d.set_item("packets_sealed", sa.counters.packets_sealed)?;
            }
            opened += sa.counters.packets_opened;
            failures += sa.counters.auth_failures;
            replays += sa.counters.replays;
        }
        d.set_item("packets_opened", opened)?;
        d.set_item("auth_failures", failures)?;
        d.set_item("replays", replays)?;
        Ok(d)
    }

    fn drops<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = self.machine()?.engine();
        let d = PyDict::new(py);
        for (r, n) in engine.drops().iter() {
            d.set_item(r.label(), n)?;
        }
        Ok(d)
    }

    #[pyo3(signature = (peer=0))]
    fn export_sas<'py>(&mut self, py: Python<'py>, peer: u32) -> PyResult<Bound<'py, PyList>> {
        let m = self.machine()?;
        let (engine, id) = match m.machine() {
            Machine::Client(c) => (c.engine(), c.server()),
            _ => (m.engine(), PeerId(peer)),
        };
        let out = PyList::empty(py);
        for e in engine.export_sas(id) {
            let d = PyDict::new(py);
            d.set_item("spi", e.spi.get())?;
            d.set_item("suite", e.suite.name())?;
            d.set_item("generation", e.generation)?;
            d.set_item("outbound", e.outbound)?;
            d.set_item("esn", e.esn)?;
            let k = e.suite.key_len();
            d.set_item("key", PyBytes::new(py, &e.keymat[..k]))?;
            d.set_item("salt", PyBytes::new(py, &e.keymat[k..]))?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Forgets every key now (they are zeroized); the endpoint cannot be used afterwards.
    fn close(&mut self) {
        self.machine = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        self.machine.is_none()
    }

    /// Cipher agility on a live key server: the suite of future generations, server-wide
    /// (`peer` None; it also ends a rotation) or of one client (over the server-wide suite or
    /// rotation; `suite_name` None takes the client's own suite away).
    #[pyo3(signature = (suite_name, peer=None))]
    fn set_suite(&mut self, suite_name: Option<&str>, peer: Option<u32>) -> PyResult<()> {
        let suite = suite_name.map(suite).transpose()?;
        let server = server_of(self.machine()?)?;
        match (peer, suite) {
            (None, Some(s)) => server.set_suite(s),
            (None, None) => {
                return Err(ConfigError::new_err(
                    "suite: None takes a client's own suite away, and needs its peer",
                ));
            }
            (Some(p), s) => server
                .set_client_suite(PeerId(p), s)
                .map_err(|_| PktcryptError::new_err(format!("no peer {p}")))?,
        }
        Ok(())
    }

    /// Future generations rotate through `suite_names` (a client's generation g gets
    /// `suite_names[(g - 1) % len]`); empty: no rotation.
    fn set_suite_rotation(&mut self, suite_names: Vec<String>) -> PyResult<()> {
        let suites = suite_names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.parse::<Suite>()
                    .map_err(|e| ConfigError::new_err(format!("suites[{i}]: {n:?}: {e}")))
            })
            .collect::<PyResult<Vec<Suite>>>()?;
        server_of(self.machine()?)?.set_suite_rotation(suites);
        Ok(())
    }

    /// The suite generation `generation` of `peer` gets when it is minted (key servers).
    fn suite_for(&mut self, peer: u32, generation: u64) -> PyResult<&'static str> {
        let server = server_of(self.machine()?)?;
        if server.engine().peer_status(PeerId(peer)).is_none() {
            return Err(PktcryptError::new_err(format!("no peer {peer}")));
        }
        Ok(server.suite_for(PeerId(peer), generation).name())
    }
}

/// The key server behind an endpoint, for the calls only a key server takes.
fn server_of(m: &mut Core) -> PyResult<&mut KeyServer> {
    match m.machine_mut() {
        Machine::Server(s) => Ok(s),
        _ => Err(RoleError::new_err(
            "only a key server chooses suites (a client takes each generation's from it)",
        )),
    }
}

/// The peer of a group member's transmits and of its controller's control messages (in
/// Python: `pktcrypt.CONTROLLER`).
const CONTROLLER: i64 = -1;

/// The settings of a group, as `pktcrypt.GroupController` and `pktcrypt.GroupMember` pass them.
#[allow(clippy::too_many_arguments)]
fn group_config(
    suite_name: &str,
    rekey_interval_ms: u64,
    retry_ms: u64,
    max_backoff_ms: u64,
    max_retries: u32,
    evict_unresponsive: bool,
    phase_grace_ms: u64,
    unknown_sender_holdoff_ms: u64,
    pfs: &str,
    channel_rekey_interval_ms: u64,
    replay_window: u32,
    backend: &str,
    role: Role,
) -> PyResult<GroupConfig> {
    let ms = Duration::from_millis;
    let mut c = GroupConfig::new();
    c.engine = pktcrypt_core::EngineConfig::new(role);
    c.engine.backend = Backend::from_name(backend)
        .ok_or_else(|| ConfigError::new_err(format!("backend: unknown {backend:?}")))?;
    if !(64..=8192).contains(&replay_window) || !replay_window.is_multiple_of(64) {
        return Err(ConfigError::new_err(
            "replay_window: must be a multiple of 64 in 64..8192",
        ));
    }
    c.engine.replay_window = replay_window;
    c.suite = suite(suite_name)?;
    c.rekey_interval = (rekey_interval_ms > 0).then(|| ms(rekey_interval_ms));
    if retry_ms == 0 {
        return Err(ConfigError::new_err("retry: must be positive"));
    }
    c.retry = ms(retry_ms);
    c.max_backoff = ms(max_backoff_ms.max(retry_ms));
    c.max_retries = max_retries;
    c.evict_unresponsive = evict_unresponsive;
    c.phase_grace = ms(phase_grace_ms);
    c.unknown_sender_holdoff = ms(unknown_sender_holdoff_ms);
    c.pfs = pfs
        .parse()
        .map_err(|e| ConfigError::new_err(format!("pfs: {e}")))?;
    c.channel_rekey_interval =
        (channel_rekey_interval_ms > 0).then(|| ms(channel_rekey_interval_ms));
    Ok(c)
}

fn init_key(field: &str, code: &str) -> PyResult<Generation> {
    keycode::decode(code).map_err(|e| InitKeyError::new_err(format!("{field}: {e}")))
}

/// A phase or member state as `pktcrypt.GroupPhase` spells it.
fn phase_name(p: MemberState) -> &'static str {
    match p {
        MemberState::UpdateCompleted => "update-completed",
        MemberState::DistributionCompleted => "distribution-completed",
        MemberState::InTransit => "in-transit",
    }
}

fn rollout_phase_name(p: Option<GroupPhase>) -> &'static str {
    match p {
        None | Some(GroupPhase::UpdateCompleted) => "update-completed",
        Some(GroupPhase::DistributionCompleted) => "distribution-completed",
        Some(GroupPhase::InTransit) => "in-transit",
    }
}

/// What `status` reports of `engine`'s `id` (the pairwise `Endpoint.status`'s keys).
fn peer_status_dict<'py>(
    py: Python<'py>,
    engine: &pktcrypt_core::Engine,
    id: PeerId,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(st) = engine.peer_status(id) else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    let (mut opened, mut failures, mut replays) = (0u64, 0u64, 0u64);
    for sa in &st.sas {
        let key = match sa.slot {
            Slot::Init => "init",
            Slot::Newest => "newest",
            Slot::Previous => "previous",
        };
        d.set_item(format!("{key}_generation"), sa.info.number)?;
        d.set_item(format!("{key}_spi"), sa.info.spi.get())?;
        d.set_item(format!("{key}_suite"), sa.info.suite.name())?;
        d.set_item(format!("{key}_exchanged"), sa.exchanged)?;
        d.set_item(
            format!("{key}_installed_ns"),
            u64::try_from(sa.installed_at.as_nanos()).unwrap_or(u64::MAX),
        )?;
        if sa.transmitting {
            d.set_item("tx_generation", sa.info.number)?;
            d.set_item("packets_sealed", sa.counters.packets_sealed)?;
        }
        opened += sa.counters.packets_opened;
        failures += sa.counters.auth_failures;
        replays += sa.counters.replays;
    }
    d.set_item("packets_opened", opened)?;
    d.set_item("auth_failures", failures)?;
    d.set_item("replays", replays)?;
    Ok(Some(d))
}

/// A group controller or member. See `pktcrypt.GroupController` and `pktcrypt.GroupMember`.
#[pyclass(module = "pktcrypt._native")]
struct Group {
    machine: Option<Core>,
}

impl Group {
    fn machine(&mut self) -> PyResult<&mut Core> {
        self.machine
            .as_mut()
            .ok_or_else(|| PktcryptError::new_err("the endpoint is closed"))
    }

    fn member_only(&mut self, what: &str) -> PyResult<&mut Core> {
        let m = self.machine()?;
        match m.machine() {
            Machine::Member(_) => Ok(m),
            _ => Err(RoleError::new_err(format!(
                "{what}: a group controller has no data keys (only members seal and open data)"
            ))),
        }
    }

    /// The caller's name of a sender or receiver: a member index, or `CONTROLLER`.
    fn peer_out(m: &Core, peer: PeerId, control: bool) -> i64 {
        match m.machine() {
            Machine::Controller(c) => c.member_of(peer).map_or(i64::from(peer.0), i64::from),
            Machine::Member(_) if control => CONTROLLER,
            Machine::Member(g) => g.sender_index(peer).map_or(i64::from(peer.0), i64::from),
            _ => i64::from(peer.0),
        }
    }

    fn open_group(
        m: &mut Core,
        mut buf: Vec<u8>,
        now: Time,
    ) -> Result<(String, i64, u64, Vec<u8>), DropReason> {
        let r = m.handle_datagram(now, None, &mut buf);
        let (kind, peer, generation, data) = match r {
            Incoming::Data {
                peer,
                packet,
                generation,
                ..
            } => ("data", peer, generation, packet.to_vec()),
            Incoming::Control { peer } => ("control", peer, 0, Vec::new()),
            Incoming::Dropped(r) => return Err(r),
        };
        let peer = Self::peer_out(m, peer, kind == "control");
        Ok((kind.to_string(), peer, generation, data))
    }
}

#[pymethods]
impl Group {
    /// A group controller; `group_key` gives the base of the members' SPIs (and, in derived
    /// mode, the anchor every member computes the group key from).
    #[staticmethod]
    #[pyo3(signature = (group_key, *, derived, suite_name, rekey_interval_ms, retry_ms,
        max_backoff_ms, max_retries, evict_unresponsive, phase_grace_ms,
        unknown_sender_holdoff_ms, pfs, channel_rekey_interval_ms, replay_window, backend))]
    #[allow(clippy::too_many_arguments)]
    fn controller(
        group_key: &str,
        derived: bool,
        suite_name: &str,
        rekey_interval_ms: u64,
        retry_ms: u64,
        max_backoff_ms: u64,
        max_retries: u32,
        evict_unresponsive: bool,
        phase_grace_ms: u64,
        unknown_sender_holdoff_ms: u64,
        pfs: &str,
        channel_rekey_interval_ms: u64,
        replay_window: u32,
        backend: &str,
    ) -> PyResult<Self> {
        let mut config = group_config(
            suite_name,
            rekey_interval_ms,
            retry_ms,
            max_backoff_ms,
            max_retries,
            evict_unresponsive,
            phase_grace_ms,
            unknown_sender_holdoff_ms,
            pfs,
            channel_rekey_interval_ms,
            replay_window,
            backend,
            Role::KeyServer,
        )?;
        config.derived = derived;
        let group_init = init_key("group_key", group_key)?;
        let c = GroupController::new(config, &group_init, Box::new(OsRandom))
            .map_err(|e| ConfigError::new_err(e.to_string()))?;
        Ok(Self {
            machine: Some(Core::from(c)),
        })
    }

    /// Group member `index` of `member_count`.
    #[staticmethod]
    #[pyo3(signature = (index, member_count, member_key, group_key, *, suite_name,
        rekey_interval_ms, retry_ms, max_backoff_ms, max_retries, evict_unresponsive,
        phase_grace_ms, unknown_sender_holdoff_ms, pfs, channel_rekey_interval_ms, replay_window,
        backend, now_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn member(
        index: u16,
        member_count: u16,
        member_key: &str,
        group_key: &str,
        suite_name: &str,
        rekey_interval_ms: u64,
        retry_ms: u64,
        max_backoff_ms: u64,
        max_retries: u32,
        evict_unresponsive: bool,
        phase_grace_ms: u64,
        unknown_sender_holdoff_ms: u64,
        pfs: &str,
        channel_rekey_interval_ms: u64,
        replay_window: u32,
        backend: &str,
        now_ns: Option<u64>,
    ) -> PyResult<Self> {
        let config = group_config(
            suite_name,
            rekey_interval_ms,
            retry_ms,
            max_backoff_ms,
            max_retries,
            evict_unresponsive,
            phase_grace_ms,
            unknown_sender_holdoff_ms,
            pfs,
            channel_rekey_interval_ms,
            replay_window,
            backend,
            Role::Client,
        )?;
        if index >= member_count {
            return Err(ConfigError::new_err(format!(
                "index: {index} is not below member_count ({member_count})"
            )));
        }
        let control = init_key("member_key", member_key)?;
        let group_init = init_key("group_key", group_key)?;
        if control.secret.expose() == group_init.secret.expose() {
            return Err(InitKeyError::new_err(
                "member_key: the same key as group_key (a member needs a key of its own)",
            ));
        }
        let m = GroupMember::new(
            config,
            index,
            &control,
            &group_init,
            member_count,
            Box::new(OsRandom),
            time(now_ns),
        )
        .map_err(|e| InitKeyError::new_err(format!("member_key / group_key: {e}")))?;
        Ok(Self {
            machine: Some(Core::from(m)),
        })
    }

    /// Provisions member `index` (the next one) with its own init key (controllers only).
    #[pyo3(signature = (index, member_key, now_ns=None))]
    fn add_member(&mut self, index: u16, member_key: &str, now_ns: Option<u64>) -> PyResult<()> {
        let key = init_key("member_key", member_key)?;
        let Machine::Controller(c) = self.machine()?.machine_mut() else {
            return Err(RoleError::new_err("only a group controller has members"));
        };
        let next = c.member_count();
        if index != next {
            return Err(ConfigError::new_err(format!(
                "index: {index}: members are added in order, the next is {next}"
            )));
        }
        c.add_member(&key, None, false, time(now_ns))
            .map(|_| ())
            .map_err(|e| InitKeyError::new_err(format!("member_key (member {index}): {e}")))
    }

    #[pyo3(signature = (inner, now_ns=None))]
    fn seal<'py>(
        &mut self,
        py: Python<'py>,
        inner: &Bound<'py, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inner = bytes_of(py, inner)?;
        let m = self.member_only("seal")?;
        let out = seal_one(m, 0, &inner, time(now_ns)).map_err(SealError_::new_err)?;
        Ok(PyBytes::new(py, &out))
    }

    /// Seals many packets with the GIL released.
    #[pyo3(signature = (packets, now_ns=None))]
    fn seal_many<'py>(
        &mut self,
        py: Python<'py>,
        packets: &Bound<'py, PyList>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| bytes_of(py, &p))
            .collect::<PyResult<_>>()?;
        let now = time(now_ns);
        let m = self.member_only("seal_many")?;
        let sealed: Result<Vec<Vec<u8>>, String> =
            py.detach(|| inputs.iter().map(|i| seal_one(m, 0, i, now)).collect());
        let sealed = sealed.map_err(SealError_::new_err)?;
        PyList::new(py, sealed.iter().map(|b| PyBytes::new(py, b)))
    }

    /// `(kind, peer, generation, data)`: `peer` the member index (data: the member that sealed
    /// it; control at a controller: the member), or `CONTROLLER` (-1).
    #[pyo3(signature = (datagram, now_ns=None))]
    fn open(
        &mut self,
        py: Python<'_>,
        datagram: &Bound<'_, PyAny>,
        now_ns: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let buf = bytes_of(py, datagram)?;
        match Self::open_group(self.machine()?, buf, time(now_ns)) {
            Ok((kind, peer, generation, data)) => {
                Ok((kind, peer, generation, PyBytes::new(py, &data))
                    .into_pyobject(py)?
                    .into_any()
                    .unbind())
            }
            Err(r) => Err(dropped_err(r)),
        }
    }

    /// Opens many datagrams with the GIL released; drops come back as exception objects.
    #[pyo3(signature = (datagrams, now_ns=None))]
    fn open_many<'py>(
        &mut self,
        py: Python<'py>,
        datagrams: &Bound<'py, PyList>,
        now_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs: Vec<Vec<u8>> = datagrams
            .iter()
            .map(|p| bytes_of(py, &p))
            .collect::<PyResult<_>>()?;
        let now = time(now_ns);
        let m = self.machine()?;
        let results: Vec<_> = py.detach(|| {
            inputs
                .into_iter()
                .map(|b| Self::open_group(m, b, now))
                .collect()
        });
        let out = PyList::empty(py);
        for r in results {
            match r {
                Ok((kind, peer, generation, data)) => {
                    out.append((kind, peer, generation, PyBytes::new(py, &data)))?
                }
                Err(reason) => out.append(dropped_err(reason).value(py))?,
            }
        }
        Ok(out)
    }

    /// The next `(peer, datagram)`: a controller's name the member, a member's go to its
    /// controller (`CONTROLLER`).
    fn poll_transmit<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(i64, Bound<'py, PyBytes>)>> {
        let m = self.machine()?;
        let Some(t) = m.poll_transmit() else {
            return Ok(None);
        };
        let peer = match m.machine() {
            Machine::Member(_) => CONTROLLER,
            _ => Self::peer_out(m, t.peer, true),
        };
        Ok(Some((peer, PyBytes::new(py, &t.contents))))
    }

    fn poll_timeout(&mut self) -> PyResult<Option<u64>> {
        let t = self.machine()?.poll_timeout();
        Ok(t.map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)))
    }

    #[pyo3(signature = (now_ns=None))]
    fn handle_timeout(&mut self, now_ns: Option<u64>) -> PyResult<()> {
        let now = time(now_ns);
        let m = self.machine()?;
        m.handle_timeout(now);
        // No events in the Python API (yet): drop them rather than let them pile up.
        while m.poll_event().is_some() {}
        Ok(())
    }

    /// A controller starts a rollout now (after the one in progress).
    #[pyo3(signature = (now_ns=None))]
    fn rekey(&mut self, now_ns: Option<u64>) -> PyResult<()> {
        let m = self.machine()?;
        if !matches!(m.machine(), Machine::Controller(_)) {
            return Err(RoleError::new_err(
                "rekey: a group member does not rekey: its controller rekeys the group",
            ));
        }
        m.rekey(time(now_ns), None);
        while m.poll_event().is_some() {}
        Ok(())
    }

    /// The keys of member `index` (a member: its sender keys; a controller: its control
    /// channel), as the pairwise `status`.
    fn status<'py>(&mut self, py: Python<'py>, index: u16) -> PyResult<Bound<'py, PyDict>> {
        let m = self.machine()?;
        let target = match m.machine() {
            Machine::Controller(c) => c.member_peer(index).map(|p| (c.channel().engine(), p)),
            Machine::Member(g) => g.sender(index).map(|p| (g.engine(), p)),
            _ => None,
        };
        let d = match target {
            Some((engine, id)) => peer_status_dict(py, engine, id)?,
            None => None,
        };
        d.ok_or_else(|| PktcryptError::new_err(format!("no member {index}")))
    }

    /// The group's generation and phase.
    fn group_status<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        match self.machine()?.machine() {
            Machine::Controller(c) => {
                d.set_item("generation", c.generation())?;
                d.set_item("phase", rollout_phase_name(c.rollout_phase()))?;
                d.set_item("rollout_in_progress", !c.idle())?;
                d.set_item("member_count", c.member_count())?;
                d.set_item("active_members", c.active_members())?;
            }
            Machine::Member(m) => {
                d.set_item("generation", m.generation())?;
                d.set_item("phase", phase_name(m.state()))?;
                d.set_item(
                    "rollout_in_progress",
                    m.state() != MemberState::UpdateCompleted,
                )?;
                d.set_item("member_count", m.member_count())?;
                d.set_item("tx_generation", m.tx_generation())?;
                if let Some(p) = m.held().get(1) {
                    d.set_item("previous_generation", *p)?;
                }
                d.set_item("index", m.index())?;
                d.set_item("can_seal", m.can_seal())?;
            }
            _ => return Err(RoleError::new_err("not a group endpoint")),
        }
        Ok(d)
    }

    fn drops<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let engine = self.machine()?.engine();
        let d = PyDict::new(py);
        for (r, n) in engine.drops().iter() {
            d.set_item(r.label(), n)?;
        }
        Ok(d)
    }

    /// Both directions of every generation held for member `index` (see `status`).
    fn export_sas<'py>(&mut self, py: Python<'py>, index: u16) -> PyResult<Bound<'py, PyList>> {
        let m = self.machine()?;
        let target = match m.machine() {
            Machine::Controller(c) => c.member_peer(index).map(|p| (c.channel().engine(), p)),
            Machine::Member(g) => g.sender(index).map(|p| (g.engine(), p)),
            _ => None,
        };
        let (engine, id) =
            target.ok_or_else(|| PktcryptError::new_err(format!("no member {index}")))?;
        let out = PyList::empty(py);
        for e in engine.export_sas(id) {
            let d = PyDict::new(py);
            d.set_item("spi", e.spi.get())?;
            d.set_item("suite", e.suite.name())?;
            d.set_item("generation", e.generation)?;
            d.set_item("outbound", e.outbound)?;
            d.set_item("esn", e.esn)?;
            let k = e.suite.key_len();
            d.set_item("key", PyBytes::new(py, &e.keymat[..k]))?;
            d.set_item("salt", PyBytes::new(py, &e.keymat[k..]))?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Forgets every key now (they are zeroized); the endpoint cannot be used afterwards.
    fn close(&mut self) {
        self.machine = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        self.machine.is_none()
    }
}

/// A new init key as a `pkc1-` text code. `spi` None picks a random SPI above 255.
#[pyfunction]
#[pyo3(signature = (suite_name, spi=None))]
fn keygen(suite_name: &str, spi: Option<u32>) -> PyResult<String> {
    let suite = suite(suite_name)?;
    let mut rng = OsRandom;
    let spi = match spi {
        Some(v) => Spi::new(v).map_err(|e| ConfigError::new_err(format!("spi: {e}")))?,
        None => loop {
            if let Ok(s) = Spi::new(u32::try_from(rng.next_u64() >> 32).unwrap_or(0)) {
                break s;
            }
        },
    };
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    let g = Generation {
        info: GenerationInfo {
            number: 0,
            spi,
            suite,
        },
        secret: Secret::from_bytes(bytes),
    };
    Ok(keycode::encode(&g).to_string())
}

/// `CLOCK_BOOTTIME` in nanoseconds: the endpoints' default clock.
#[pyfunction]
fn now_ns() -> u64 {
    boottime_ns()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Endpoint>()?;
    m.add_class::<Group>()?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(now_ns, m)?)?;
    m.add("PktcryptError", py.get_type::<PktcryptError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("InitKeyError", py.get_type::<InitKeyError>())?;
    m.add("RoleError", py.get_type::<RoleError>())?;
    m.add("SealError", py.get_type::<SealError_>())?;
    m.add("DroppedError", py.get_type::<DroppedError>())?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("ReplayError", py.get_type::<ReplayError>())?;
    m.add("UnknownSpiError", py.get_type::<UnknownSpiError>())?;
    m.add("MalformedError", py.get_type::<MalformedError>())?;
    Ok(())
}
