//! The I/O layer between the kernel and the sans-IO core: the XDP steering program.
//!
//! [`XdpSteering::attach`] loads pktcrypt's XDP object (built from `ebpf/pktcrypt-xdp` by
//! `scripts/build-ebpf.sh`), attaches it to an interface in native (driver) mode, or in generic
//! (SKB) mode with a warning when the driver has no XDP support, and configures what it steers.
//! The program is attached through rtnetlink ([`xdp_attach`]), not a bpf_link: it stays on the
//! interface when the process exits or is killed, and with no AF_XDP socket left it drops
//! protected-prefix traffic (fail closed) until the next attach replaces it atomically or
//! [`XdpSteering::detach`] / [`xdp_attach::detach_all`] (`pktcrypt down`) removes it.
//!
//! [`xsk`] binds AF_XDP sockets (inner and outer interface on one UMEM per queue),
//! [`gateway`] runs the workers that forward between them, and [`net`] reads what the kernel
//! knows about interfaces, neighbours and routes (rtnetlink), and follows their changes.

pub mod gateway;
pub mod net;
pub mod xdp_attach;
pub mod xsk;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::Xdp;
use core::net::IpAddr;
use pktcrypt_common::{XDP_COUNTER_SLOTS, XDP_PROGRAM, XdpCounter, config, maps};
use std::os::fd::{AsFd, AsRawFd};

/// What to steer into the AF_XDP sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringConfig {
    /// Steer UDP to this port (ESP-in-UDP, outer interface).
    pub esp_port: Option<u16>,
    /// Steer packets to these destination prefixes (inner interface).
    pub prefixes: Vec<(IpAddr, u8)>,
}

/// Counters kept by the XDP program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Redirected into an AF_XDP socket.
    pub steered: u64,
    /// Passed to the kernel untouched.
    pub passed: u64,
    /// Headers could not be parsed within bounds (passed).
    pub malformed: u64,
    /// Matched, but no socket on the receiving queue (ESP-in-UDP passed, protected-prefix
    /// packets dropped: fail closed).
    pub no_socket: u64,
}

/// The attach mode actually used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP: the driver has no native support; slower.
    Generic,
}

/// The XDP program attached to one interface. It stays attached when dropped (fail closed):
/// [`Self::detach`] removes it.
pub struct XdpSteering {
    ebpf: Ebpf,
    attached: bool,
    iface: String,
    mode: AttachMode,
}

impl std::fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSteering")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl XdpSteering {
    /// Loads `object` (the compiled XDP program) and attaches it to `iface`.
    ///
    /// # Errors
    /// A message naming the step that failed (load, verifier, attach, map update).
    pub fn attach(object: &[u8], iface: &str, cfg: &SteeringConfig) -> Result<Self, String> {
        let mut ebpf = Ebpf::load(object).map_err(|e| err("loading the XDP object", e))?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or_else(|| format!("the object has no program {XDP_PROGRAM}"))?
                .try_into()
                .map_err(|e| err("program type", e))?;
            prog.load()
                .map_err(|e| err("the kernel refused the program", e))?;
        }
        let mut steering = Self {
            ebpf,
            attached: false,
            iface: iface.to_owned(),
            mode: AttachMode::Native,
        };
        steering.configure(cfg)?;
        let prog: &Xdp = steering
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or("program vanished")?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let fd = prog
            .fd()
            .map_err(|e| err("program fd", e))?
            .as_fd()
            .as_raw_fd();
        // Replaces the program a previous run left (fail closed) in one step.
        if let Err(native) = xdp_attach::attach(iface, fd, xdp_attach::XDP_FLAGS_DRV_MODE) {
            xdp_attach::attach(iface, fd, xdp_attach::XDP_FLAGS_SKB_MODE).map_err(|e| {
                format!("attaching to {iface}: native mode: {native}; generic mode: {e}")
            })?;
            steering.mode = AttachMode::Generic;
        }
        steering.attached = true;
        Ok(steering)
    }

    /// The attach mode used.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    fn configure(&mut self, cfg: &SteeringConfig) -> Result<(), String> {
        let mut mode = 0;
        if cfg.esp_port.is_some() {
            mode |= config::MODE_STEER_ESP;
        }
        if !cfg.prefixes.is_empty() {
            mode |= config::MODE_STEER_PREFIXES;
        }
        let mut array: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(maps::CONFIG)
                .ok_or("the object has no CONFIG map")?,
        )
        .map_err(|e| err("CONFIG map", e))?;
        array
            .set(config::ESP_PORT, u32::from(cfg.esp_port.unwrap_or(0)), 0)
            .map_err(|e| err("CONFIG map", e))?;
        array
            .set(config::MODE, mode, 0)
            .map_err(|e| err("CONFIG map", e))?;
        for (addr, len) in &cfg.prefixes {
            self.add_prefix(*addr, *len)?;
        }
        Ok(())
    }

    /// Adds a protected prefix.
    ///
    /// # Errors
    /// A prefix length beyond the address size, or a map error.
    pub fn add_prefix(&mut self, addr: IpAddr, len: u8) -> Result<(), String> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(format!("prefix {addr}/{len}: length above 32"));
                }
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V4)
                        .ok_or("no PREFIXES_V4 map")?,
                )
                .map_err(|e| err("PREFIXES_V4 map", e))?;
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(|e| err("PREFIXES_V4 map", e))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(format!("prefix {addr}/{len}: length above 128"));
                }
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V6)
                        .ok_or("no PREFIXES_V6 map")?,
                )
                .map_err(|e| err("PREFIXES_V6 map", e))?;
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(|e| err("PREFIXES_V6 map", e))
            }
        }
    }

    /// The program's counters, summed over CPUs.
    ///
    /// # Errors
    /// A map error.
    pub fn counters(&self) -> Result<XdpCounters, String> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::COUNTERS).ok_or("no COUNTERS map")?)
                .map_err(|e| err("COUNTERS map", e))?;
        let mut sums = [0u64; XDP_COUNTER_SLOTS as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            let values = array
                .get(&(i as u32), 0)
                .map_err(|e| err("COUNTERS map", e))?;
            *sum = values.iter().sum();
        }
        Ok(XdpCounters {
            steered: sums[XdpCounter::Steered as usize],
            passed: sums[XdpCounter::Passed as usize],
            malformed: sums[XdpCounter::Malformed as usize],
            no_socket: sums[XdpCounter::NoSocket as usize],
        })
    }

    /// Registers an AF_XDP socket for RX queue `queue` in the `XSKS` map.
    ///
    /// # Errors
    /// A map error.
    pub fn register_socket(&mut self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), String> {
        let mut xsks: aya::maps::XskMap<&mut MapData> = aya::maps::XskMap::try_from(
            self.ebpf
                .map_mut(maps::XSKS)
                .ok_or("the object has no XSKS map")?,
        )
        .map_err(|e| err("XSKS map", e))?;
        xsks.set(queue, fd, 0).map_err(|e| err("XSKS map", e))
    }

    /// Removes the program from the interface (otherwise it stays, fail closed, when this
    /// handle is dropped or the process exits).
    pub fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            let flags = match self.mode {
                AttachMode::Native => xdp_attach::XDP_FLAGS_DRV_MODE,
                AttachMode::Generic => xdp_attach::XDP_FLAGS_SKB_MODE,
            };
            let _ = xdp_attach::detach(&self.iface, flags);
        }
    }
}
