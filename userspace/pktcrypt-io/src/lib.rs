//! The I/O layer between the kernel and the sans-IO core: the XDP steering program.
//!
//! [`XdpSteering::attach`] loads pktcrypt's XDP object ([`XDP_OBJECT`], built from
//! `ebpf/pktcrypt-xdp` by `scripts/build-ebpf.sh`, checked in and embedded), attaches it to an interface in native (driver) mode, or in generic
//! (SKB) mode with a warning when the driver has no XDP support, and configures what it steers.
//! The program is attached through rtnetlink ([`xdp_attach`]), not a bpf_link: it stays on the
//! interface when the process exits or is killed, and with no AF_XDP socket left it drops
//! protected-prefix traffic (fail closed) until the next attach replaces it atomically or
//! [`XdpSteering::detach`] / [`xdp_attach::detach_all`] (`pktcrypt down`) removes it.
//!
//! [`xsk`] binds AF_XDP sockets (inner and outer interface on one UMEM per queue) and types
//! the frames they move, [`gateway`] runs the workers that forward between them, and [`net`]
//! reads what the kernel knows about interfaces, neighbours and routes (rtnetlink), and follows
//! their changes. The system calls the crate makes itself go through one module (`sys`), and
//! every fallible function returns an [`Error`] that keeps the errno.

mod error;
pub mod gateway;
pub mod net;
mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod xdp_attach;
pub mod xsk;

pub use error::{Error, Result};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use core::net::IpAddr;
use pktcrypt_common::{XDP_COUNTER_SLOTS, XDP_PROGRAM, XdpCounter, config, maps};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// The XDP program, compiled: the object built from `ebpf/pktcrypt-xdp` by
/// `scripts/build-ebpf.sh` (nightly, bpf-linker), checked in as `xdp/pktcrypt-xdp.o` and
/// embedded here, so that a build on stable Rust runs `pktcrypt up` as it is. The build is
/// reproducible: CI rebuilds it from source and fails if it differs from the checked-in object
/// by a byte (`scripts/build-ebpf.sh --check`). Aligned to 8 bytes, as the ELF parser needs.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!("../xdp/pktcrypt-xdp.o");

/// The XDP object to load: the file at `path` if one is given (an override: `xdp_object` in
/// the configuration, `PKTCRYPT_XDP_OBJECT`), else the embedded [`XDP_OBJECT`].
///
/// # Errors
/// The file cannot be read (the message names it).
pub fn xdp_object(path: Option<&Path>) -> Result<Cow<'static, [u8]>> {
    match path {
        None => Ok(Cow::Borrowed(XDP_OBJECT)),
        Some(p) => std::fs::read(p)
            .map(Cow::Owned)
            .map_err(|e| Error::new(format!("reading the XDP object {}", p.display()), e)),
    }
}

/// What to steer into the AF_XDP sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringConfig {
    /// Steer UDP to this port (ESP-in-UDP, outer interface).
    pub esp_port: Option<u16>,
    /// Steer packets to these destination prefixes (inner interface).
    pub prefixes: Vec<(IpAddr, u8)>,
    /// With `esp_port`: steer only ESP under these SPIs (the ones the gateway holds) and drop
    /// the rest in XDP; `None` steers every datagram to the port. Keep it current with
    /// [`XdpSteering::set_spis`].
    pub spis: Option<Vec<u32>>,
    /// Capacity of the SPI map: the most SPIs held at once (at least the number given).
    pub spi_capacity: u32,
    /// How to attach: native if the driver has it, else generic (the default), or only one.
    pub mode: XdpMode,
}

/// How the XDP program is attached (`xdp_mode` in a gateway's file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode if the driver has it, else generic.
    #[default]
    Auto,
    /// Native mode only: fail if the driver lacks it.
    Native,
    /// Generic (SKB) mode: the program runs on the kernel's socket buffers. On veth this
    /// avoids native mode's copy of every frame the stack sends it into a fresh page.
    Generic,
}

impl XdpMode {
    /// The mode named `auto`, `native` or `generic`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
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
    /// ESP-in-UDP under an SPI not held: dropped (SPI check).
    pub unknown_spi: u64,
    /// NAT-keepalives to the ESP port: dropped (SPI check).
    pub keepalive: u64,
    /// The non-ESP marker (SPI 0) to the ESP port: dropped (SPI check).
    pub not_esp: u64,
    /// Payloads to the ESP port too short for an ESP header: dropped (SPI check).
    pub truncated: u64,
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
    /// The SPIs in the `SPIS` map.
    spis: BTreeSet<u32>,
    spi_capacity: u32,
}

impl std::fmt::Debug for XdpSteering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpSteering")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(what, e)
}

impl XdpSteering {
    /// Loads `object` (the compiled XDP program) and attaches it to `iface`.
    ///
    /// # Errors
    /// A message naming the step that failed (load, verifier, attach, map update).
    pub fn attach(object: &[u8], iface: &str, cfg: &SteeringConfig) -> Result<Self> {
        let spi_capacity = cfg
            .spi_capacity
            .max(cfg.spis.as_ref().map_or(0, |s| s.len() as u32))
            .max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::SPIS, spi_capacity)
            .load(object)
            .map_err(|e| err("loading the XDP object", e))?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut(XDP_PROGRAM)
                .ok_or_else(|| Error::msg(format!("the object has no program {XDP_PROGRAM}")))?
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
            spis: BTreeSet::new(),
            spi_capacity,
        };
        steering.configure(cfg)?;
        let prog: &Xdp = steering
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or_else(|| Error::msg("program vanished"))?
            .try_into()
            .map_err(|e| err("program type", e))?;
        let fd = prog
            .fd()
            .map_err(|e| err("program fd", e))?
            .as_fd()
            .as_raw_fd();
        // Replaces the program a previous run left (fail closed) in one step. The kernel holds
        // a native and a generic program never at once: switching modes removes the other
        // mode's program first (the one moment without a program, and only when the mode
        // changes).
        let attach = |flags: u32, other: u32| {
            xdp_attach::attach(iface, fd, flags).or_else(|e| {
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
                let _ = xdp_attach::detach(iface, other);
                xdp_attach::attach(iface, fd, flags)
            })
        };
        let (native, generic) = (
            xdp_attach::XDP_FLAGS_DRV_MODE,
            xdp_attach::XDP_FLAGS_SKB_MODE,
        );
        let attach_native = || attach(native, generic);
        if cfg.mode == XdpMode::Generic {
            attach(generic, native)
                .map_err(|e| e.within(format!("attaching to {iface} in generic mode")))?;
            steering.mode = AttachMode::Generic;
        } else if let Err(native) = attach_native() {
            if cfg.mode == XdpMode::Native {
                return Err(native.within(format!("attaching to {iface} in native mode")));
            }
            // The errno kept is generic mode's (the last tried); both messages are shown.
            xdp_attach::attach(iface, fd, xdp_attach::XDP_FLAGS_SKB_MODE).map_err(|e| {
                e.within(format!(
                    "attaching to {iface}: native mode: {native}; generic mode"
                ))
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

    fn configure(&mut self, cfg: &SteeringConfig) -> Result<()> {
        let mut mode = 0;
        if cfg.esp_port.is_some() {
            mode |= config::MODE_STEER_ESP;
        }
        if !cfg.prefixes.is_empty() {
            mode |= config::MODE_STEER_PREFIXES;
        }
        if let Some(spis) = &cfg.spis {
            // Filled before the program is attached: no moment checks against an empty map.
            self.set_spis(spis.iter().copied())?;
            mode |= config::MODE_CHECK_SPI;
        }
        let mut array: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(maps::CONFIG)
                .ok_or_else(|| Error::msg("the object has no CONFIG map"))?,
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
    pub fn add_prefix(&mut self, addr: IpAddr, len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                if len > 32 {
                    return Err(Error::msg(format!("prefix {addr}/{len}: length above 32")));
                }
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V4)
                        .ok_or_else(|| Error::msg("no PREFIXES_V4 map"))?,
                )
                .map_err(|e| err("PREFIXES_V4 map", e))?;
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(|e| err("PREFIXES_V4 map", e))
            }
            IpAddr::V6(a) => {
                if len > 128 {
                    return Err(Error::msg(format!("prefix {addr}/{len}: length above 128")));
                }
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V6)
                        .ok_or_else(|| Error::msg("no PREFIXES_V6 map"))?,
                )
                .map_err(|e| err("PREFIXES_V6 map", e))?;
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .map_err(|e| err("PREFIXES_V6 map", e))
            }
        }
    }

    /// Removes a protected prefix (one added with exactly this address and length).
    ///
    /// # Errors
    /// A map error, or no such prefix.
    pub fn remove_prefix(&mut self, addr: IpAddr, len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V4)
                        .ok_or_else(|| Error::msg("no PREFIXES_V4 map"))?,
                )
                .map_err(|e| err("PREFIXES_V4 map", e))?;
                trie.remove(&Key::new(u32::from(len), a.octets()))
                    .map_err(|e| err("PREFIXES_V4 map", e))
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
                    self.ebpf
                        .map_mut(maps::PREFIXES_V6)
                        .ok_or_else(|| Error::msg("no PREFIXES_V6 map"))?,
                )
                .map_err(|e| err("PREFIXES_V6 map", e))?;
                trie.remove(&Key::new(u32::from(len), a.octets()))
                    .map_err(|e| err("PREFIXES_V6 map", e))
            }
        }
    }

    fn spi_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, u32, u64>> {
        PerCpuHashMap::try_from(
            self.ebpf
                .map_mut(maps::SPIS)
                .ok_or_else(|| Error::msg("no SPIS map"))?,
        )
        .map_err(|e| err("SPIS map", e))
    }

    /// Makes the SPI map hold exactly `held` (the SPIs the gateway holds keys for): adds the
    /// new ones (counters at zero), removes the others. Call it after keys change and before
    /// any of them is announced to a peer.
    ///
    /// # Errors
    /// More SPIs than the map's capacity, or a map error; the map then holds every SPI it
    /// could take (the ones removed are gone).
    pub fn set_spis(&mut self, held: impl IntoIterator<Item = u32>) -> Result<()> {
        let held: BTreeSet<u32> = held.into_iter().collect();
        if held.len() > self.spi_capacity as usize {
            return Err(Error::msg(format!(
                "{} SPIs held, the XDP SPI map takes {}",
                held.len(),
                self.spi_capacity
            )));
        }
        let gone: Vec<u32> = self.spis.difference(&held).copied().collect();
        let new: Vec<u32> = held.difference(&self.spis).copied().collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err("number of CPUs", e))?;
        let mut map = self.spi_map()?;
        let mut result = Ok(());
        let mut removed = Vec::new();
        for spi in &gone {
            match map.remove(spi) {
                Ok(()) => removed.push(*spi),
                Err(e) => result = Err(err("SPIS map remove", e)),
            }
        }
        let mut added = Vec::new();
        for spi in &new {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| err("SPIS", e))?;
            match map.insert(spi, zeros, 0) {
                Ok(()) => added.push(*spi),
                Err(e) => result = Err(err("SPIS map insert", e)),
            }
        }
        for spi in removed {
            self.spis.remove(&spi);
        }
        self.spis.extend(added);
        result
    }

    /// The SPIs in the SPI map.
    pub fn spis(&self) -> &BTreeSet<u32> {
        &self.spis
    }

    /// Packets received under each SPI in the SPI map since it was added, summed over CPUs.
    ///
    /// # Errors
    /// A map error.
    pub fn spi_packets(&self) -> Result<HashMap<u32, u64>> {
        let map: PerCpuHashMap<&MapData, u32, u64> = PerCpuHashMap::try_from(
            self.ebpf
                .map(maps::SPIS)
                .ok_or_else(|| Error::msg("no SPIS map"))?,
        )
        .map_err(|e| err("SPIS map", e))?;
        let mut out = HashMap::with_capacity(self.spis.len());
        for spi in &self.spis {
            if let Ok(values) = map.get(spi, 0) {
                out.insert(*spi, values.iter().sum());
            }
        }
        Ok(out)
    }

    /// The program's counters, summed over CPUs.
    ///
    /// # Errors
    /// A map error.
    pub fn counters(&self) -> Result<XdpCounters> {
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::COUNTERS)
                .ok_or_else(|| Error::msg("no COUNTERS map"))?,
        )
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
            unknown_spi: sums[XdpCounter::UnknownSpi as usize],
            keepalive: sums[XdpCounter::Keepalive as usize],
            not_esp: sums[XdpCounter::NotEsp as usize],
            truncated: sums[XdpCounter::Truncated as usize],
        })
    }

    /// Registers an AF_XDP socket for RX queue `queue` in the `XSKS` map.
    ///
    /// # Errors
    /// A map error.
    pub fn register_socket(&mut self, queue: u32, fd: std::os::fd::RawFd) -> Result<()> {
        let mut xsks: aya::maps::XskMap<&mut MapData> = aya::maps::XskMap::try_from(
            self.ebpf
                .map_mut(maps::XSKS)
                .ok_or_else(|| Error::msg("the object has no XSKS map"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object is what aya can parse without a kernel: 8-byte aligned, a
    /// little-endian ELF64 relocatable for BPF, with the program and the maps it looks up by
    /// name. (Loading it needs root: the XDP tests and the `xdp` fuzz target do.)
    #[test]
    fn the_embedded_xdp_object_is_an_aligned_bpf_elf_with_the_program_and_maps() {
        let o = XDP_OBJECT;
        assert_eq!(o.as_ptr().align_offset(8), 0, "aligned as aya needs");
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!((o[4], o[5]), (2, 1), "ELF64, little-endian");
        assert_eq!(u16::from_le_bytes([o[16], o[17]]), 1, "ET_REL");
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247, "EM_BPF");
        let has = |name: &str| {
            o.windows(name.len() + 1)
                .any(|w| w[..name.len()] == *name.as_bytes() && w[name.len()] == 0)
        };
        for name in [
            XDP_PROGRAM,
            maps::XSKS,
            maps::CONFIG,
            maps::COUNTERS,
            maps::SPIS,
        ] {
            assert!(has(name), "{name} in the object's symbols");
        }
        assert!(matches!(xdp_object(None), Ok(Cow::Borrowed(b)) if b.as_ptr() == o.as_ptr()));
        let missing = xdp_object(Some(Path::new("/nonexistent/pktcrypt-xdp.o")))
            .expect_err("no such file")
            .to_string();
        assert!(missing.contains("/nonexistent/pktcrypt-xdp.o"), "{missing}");
    }
}
