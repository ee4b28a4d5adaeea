//! The XDP program on arbitrary frames, in the kernel, through `BPF_PROG_TEST_RUN`.
//!
//! Loads the compiled object (the one `pktcrypt-io` embeds, `pktcrypt_io::XDP_OBJECT`, or the
//! file named by `PKTCRYPT_XDP_OBJECT` if set) once per process, four times, each configured as
//! the daemon configures an interface: the inner side with some protected prefixes, the inner
//! side with everything protected (`0.0.0.0/0`, `::/0`), the outer side (ESP-in-UDP on port
//! 4500), and the outer side with the SPI check. Maps are configured by name (`CONFIG`, `PREFIXES_V4`, `PREFIXES_V6` from
//! `pktcrypt-common`); any other map of the object is left as it is, so the harness runs
//! against later versions of the program too. No AF_XDP socket is registered, so a steered frame
//! takes the program's fallback action.
//!
//! Every frame (14 to 1526 bytes: Ethernet with up to two tags) runs once through the program,
//! and:
//! - the action is `XDP_PASS`, `XDP_DROP` or `XDP_REDIRECT`;
//! - the frame comes back unmodified (same length, same bytes);
//! - on an inner side, a frame the kernel could take as IP to a protected destination (Ethernet
//!   with at most two 802.1Q/802.1ad tags, then IPv4 with version 4, IHL >= 5 and a whole
//!   20-byte header, or IPv6 with a whole 40-byte header) never gets `XDP_PASS` (fail closed),
//!   nor does a frame with a third VLAN tag.
//!
//! Frames are raw bytes or, when the flag byte says so, built from the input: tags, ethertype,
//! version, a destination from a table (inside or outside the prefixes), UDP to the ESP port, so
//! that the interesting cases come up often (the program itself gives the fuzzer no coverage).
//!
//! Needs root (loading programs); without root it says so once and skips every input.
#![no_main]

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::Xdp;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use libfuzzer_sys::fuzz_target;
use pktcrypt_common::{XDP_PROGRAM, config, maps};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const ESP_PORT: u16 = 4500;
const MAX_FRAME: usize = 1526;

/// The protected prefixes of the first inner instance.
const PREFIXES: [(&str, u8); 5] = [
    ("10.2.0.0", 24),
    ("10.3.0.0", 16),
    ("192.0.2.77", 32),
    ("fd02::", 64),
    ("2001:db8:1::", 48),
];

/// Destinations the frame builder writes: inside and outside the prefixes.
const DESTINATIONS: [&str; 16] = [
    "10.2.0.9",
    "10.2.1.9",
    "10.3.255.255",
    "10.4.0.1",
    "192.0.2.77",
    "192.0.2.78",
    "0.0.0.0",
    "255.255.255.255",
    "fd02::9",
    "fd02:0:0:1::9",
    "2001:db8:1:ffff::1",
    "2001:db8:2::1",
    "::",
    "ff02::1",
    "fe80::1",
    "::ffff:10.2.0.9",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Protected prefixes `PREFIXES`.
    Inner,
    /// Everything protected.
    InnerAll,
    /// ESP-in-UDP to `ESP_PORT`.
    Outer,
    /// ESP-in-UDP to `ESP_PORT` under the SPIs in `SPIS` only (the gateways' outer side).
    OuterChecked,
}

/// The SPIs held by the `OuterChecked` instance.
const HELD_SPIS: [u32; 3] = [0x100, 0x2000_0001, 0xffff_fffe];

impl Side {
    const ALL: [Side; 4] = [Side::Inner, Side::InnerAll, Side::Outer, Side::OuterChecked];

    fn outer(self) -> bool {
        matches!(self, Side::Outer | Side::OuterChecked)
    }

    fn prefixes(self) -> Vec<(IpAddr, u8)> {
        match self {
            Side::Inner => PREFIXES
                .iter()
                .map(|(a, l)| (a.parse().expect("prefix"), *l))
                .collect(),
            Side::InnerAll => vec![
                (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            ],
            Side::Outer | Side::OuterChecked => Vec::new(),
        }
    }

    fn protects(self, dst: IpAddr) -> bool {
        self.prefixes()
            .iter()
            .any(|&(net, len)| contains(net, len, dst))
    }
}

fn contains(net: IpAddr, len: u8, a: IpAddr) -> bool {
    match (net, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// One instance: the loaded object and its program's fd.
struct Loaded {
    _ebpf: Ebpf,
    fd: RawFd,
}

/// Loads one instance and configures its maps for `side`.
fn load(object: &[u8], side: Side) -> Loaded {
    let mut ebpf = Ebpf::load(object).expect("loading the XDP object");
    let mode = match side {
        Side::Inner | Side::InnerAll => config::MODE_STEER_PREFIXES,
        Side::Outer => config::MODE_STEER_ESP,
        Side::OuterChecked => config::MODE_STEER_ESP | config::MODE_CHECK_SPI,
    };
    if side == Side::OuterChecked {
        let map = ebpf
            .map_mut(maps::SPIS)
            .expect("an object with MODE_CHECK_SPI has SPIS");
        let mut spis: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(map).expect("SPIS map");
        let cpus = aya::util::nr_cpus().expect("CPUs");
        for spi in HELD_SPIS {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).expect("values");
            spis.insert(spi, zeros, 0).expect("SPIS");
        }
    }
    match ebpf.map_mut(maps::CONFIG) {
        Some(map) => {
            let mut array: Array<&mut MapData, u32> = Array::try_from(map).expect("CONFIG map");
            let port = if side.outer() { ESP_PORT } else { 0 };
            array
                .set(config::ESP_PORT, u32::from(port), 0)
                .expect("CONFIG");
            array.set(config::MODE, mode, 0).expect("CONFIG");
        }
        None => eprintln!("xdp fuzz target: the object has no {} map", maps::CONFIG),
    }
    for (net, len) in side.prefixes() {
        let name = if net.is_ipv4() {
            maps::PREFIXES_V4
        } else {
            maps::PREFIXES_V6
        };
        let Some(map) = ebpf.map_mut(name) else {
            eprintln!("xdp fuzz target: the object has no {name} map");
            continue;
        };
        match net {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> =
                    LpmTrie::try_from(map).expect("PREFIXES_V4 map");
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .expect("PREFIXES_V4");
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
                    LpmTrie::try_from(map).expect("PREFIXES_V6 map");
                trie.insert(&Key::new(u32::from(len), a.octets()), 1, 0)
                    .expect("PREFIXES_V6");
            }
        }
    }
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .unwrap_or_else(|| panic!("the object has no program {XDP_PROGRAM}"))
        .try_into()
        .expect("an XDP program");
    prog.load().expect("the kernel refused the program");
    let fd = prog.fd().expect("program fd").as_fd().as_raw_fd();
    Loaded { _ebpf: ebpf, fd }
}

/// The four instances (loaded once, for the life of the process), or `None` (skipping)
/// without root.
fn programs() -> Option<&'static [Loaded; 4]> {
    static PROGRAMS: OnceLock<Option<[Loaded; 4]>> = OnceLock::new();
    PROGRAMS
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("xdp fuzz target: not root: SKIPPING (no input is tested)");
                return None;
            }
            let path = std::env::var_os("PKTCRYPT_XDP_OBJECT").map(std::path::PathBuf::from);
            let object = pktcrypt_io::xdp_object(path.as_deref()).unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "xdp fuzz target: {}",
                path.map_or("the embedded object".into(), |p| p.display().to_string())
            );
            Some(Side::ALL.map(|side| load(&object, side)))
        })
        .as_ref()
}

/// `union bpf_attr` as `BPF_PROG_TEST_RUN` reads it (`include/uapi/linux/bpf.h`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the program once on `frame`: its action and the frame as it came out (in `out`).
fn test_run(fd: RawFd, frame: &[u8], out: &mut Vec<u8>) -> (u32, usize) {
    out.clear();
    out.resize(frame.len() + 512, 0);
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_TEST_RUN of the size passed; `data_in`
    // points to `frame.len()` readable bytes and `data_out` to `out.len()` writable bytes, both
    // alive for the duration of the call; the kernel writes only `retval`, `data_size_out`,
    // `duration` and up to `data_size_out` bytes of `out`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            core::mem::size_of::<TestRunAttr>(),
        )
    };
    assert!(
        r == 0,
        "BPF_PROG_TEST_RUN on {} bytes: {}",
        frame.len(),
        std::io::Error::last_os_error()
    );
    (attr.retval, attr.data_size_out as usize)
}

/// The destination of a frame the kernel could take as an IP packet (see the module docs),
/// parsed independently of the program.
fn ip_destination(frame: &[u8]) -> Option<IpAddr> {
    let mut at = 12;
    for _ in 0..=2 {
        let t = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match t {
            0x8100 | 0x88a8 => at += 4,
            0x0800 => {
                let ip = frame.get(at + 2..at + 22)?;
                let ok = ip[0] >> 4 == 4 && ip[0] & 0x0f >= 5;
                let dst: [u8; 4] = ip[16..20].try_into().ok()?;
                return ok.then_some(IpAddr::from(dst));
            }
            0x86dd => {
                let ip = frame.get(at + 2..at + 42)?;
                let dst: [u8; 16] = ip[24..40].try_into().ok()?;
                return Some(IpAddr::from(dst));
            }
            _ => return None,
        }
    }
    // A third tag: not a frame this invariant covers.
    None
}

/// The SPI of a plain ESP-in-UDP frame to `ESP_PORT` (at most two tags; IPv4 with a valid IHL,
/// not a later fragment, or IPv6 with UDP right after the fixed header; a UDP length covering an
/// SPI and a sequence number, which the frame holds), parsed independently of the program.
fn esp_spi(frame: &[u8]) -> Option<u32> {
    let mut at = 12;
    for _ in 0..2 {
        let t = frame.get(at..at + 2)?;
        if !matches!(u16::from_be_bytes([t[0], t[1]]), 0x8100 | 0x88a8) {
            break;
        }
        at += 4;
    }
    let t = frame.get(at..at + 2)?;
    let ip = frame.get(at + 2..)?;
    let udp = match u16::from_be_bytes([t[0], t[1]]) {
        0x0800 => {
            let ihl = usize::from(*ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            (ip[0] >> 4 == 4 && ihl >= 20 && *ip.get(9)? == 17 && frag & 0x1fff == 0)
                .then_some(ihl)?
        }
        0x86dd => (*ip.get(6)? == 17).then_some(40)?,
        _ => return None,
    };
    let h = ip.get(udp..udp + 16)?;
    let port = u16::from_be_bytes([h[2], h[3]]);
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    (port == ESP_PORT && len >= 16).then(|| u32::from_be_bytes([h[8], h[9], h[10], h[11]]))
}

/// Whether the frame carries a third 802.1Q/802.1ad tag (the program does not read what
/// follows: on the plaintext side it must not pass such a frame).
fn third_tag(frame: &[u8]) -> bool {
    let tag = |at: usize| {
        frame
            .get(at..at + 2)
            .is_some_and(|t| matches!(u16::from_be_bytes([t[0], t[1]]), 0x8100 | 0x88a8))
    };
    tag(12) && tag(16) && tag(20)
}

/// The input's bytes in order, zeros once they run out.
struct Bytes<'a> {
    raw: &'a [u8],
}

impl Bytes<'_> {
    fn take(&mut self, n: usize) -> impl Iterator<Item = u8> + '_ {
        let (now, later) = self.raw.split_at(n.min(self.raw.len()));
        self.raw = later;
        now.iter()
            .copied()
            .chain(core::iter::repeat_n(0, n - now.len()))
    }
}

/// A frame built from the input (see the module docs): `flags` bits 0-1 tags, 2-3 ethertype,
/// 4 version fixed, 5 destination from the table (`sel`), 6 UDP to the ESP port; the rest of
/// the input after the headers is the payload.
fn build(flags: u8, sel: u8, raw: &[u8]) -> Vec<u8> {
    let mut raw = Bytes { raw };
    let mut f: Vec<u8> = raw.take(12).collect();
    for k in 0..flags & 3 {
        let tpid: u16 = if (sel >> k) & 1 == 0 { 0x8100 } else { 0x88a8 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend(raw.take(2));
    }
    let ethertype: u16 = match (flags >> 2) & 3 {
        0 => 0x0800,
        1 => 0x86dd,
        2 => 0x0806,
        _ => {
            let t: Vec<u8> = raw.take(2).collect();
            u16::from_be_bytes([t[0], t[1]])
        }
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = f.len();
    let dst: IpAddr = DESTINATIONS[usize::from(sel >> 4)]
        .parse()
        .expect("destination");
    let v6 = ethertype == 0x86dd || (ethertype != 0x0800 && dst.is_ipv6());
    let header = if v6 { 40 } else { 20 };
    f.extend(raw.take(header + 8));
    if flags & 16 != 0 {
        f[l3] = if v6 { 0x60 | (f[l3] & 0x0f) } else { 0x45 };
    }
    if flags & 32 != 0 {
        match (dst, v6) {
            (IpAddr::V4(d), false) => f[l3 + 16..l3 + 20].copy_from_slice(&d.octets()),
            (IpAddr::V6(d), true) => f[l3 + 24..l3 + 40].copy_from_slice(&d.octets()),
            (IpAddr::V4(d), true) => {
                f[l3 + 24..l3 + 40].copy_from_slice(&d.to_ipv6_mapped().octets())
            }
            (IpAddr::V6(d), false) => f[l3 + 16..l3 + 20].copy_from_slice(&d.octets()[12..]),
        }
    }
    if flags & 64 != 0 {
        f[if v6 { l3 + 6 } else { l3 + 9 }] = 17;
        let udp = if v6 {
            l3 + 40
        } else {
            l3 + usize::from(f[l3] & 0x0f).max(5) * 4
        };
        if let Some(port) = f.get_mut(udp + 2..udp + 4) {
            port.copy_from_slice(&ESP_PORT.to_be_bytes());
        }
    }
    f.extend_from_slice(raw.raw);
    f
}

/// What a frame is, parsed independently of the program: tags (0-3) × kind (other, IPv4 or IPv6
/// to a protected destination, to another one, UDP to the ESP port).
fn class(frame: &[u8], side: Side) -> usize {
    let mut at = 12;
    let mut tags = 0;
    let t = loop {
        let Some(t) = frame.get(at..at + 2) else {
            return 0;
        };
        let t = u16::from_be_bytes([t[0], t[1]]);
        if matches!(t, 0x8100 | 0x88a8) && tags < 3 {
            at += 4;
            tags += 1;
            continue;
        }
        break t;
    };
    let ip = &frame[(at + 2).min(frame.len())..];
    let udp_port = |udp: usize| {
        ip.get(udp + 2..udp + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    let kind = match (t, ip_destination(frame)) {
        (0x0800, Some(dst)) => {
            let udp = usize::from(ip[0] & 0x0f) * 4;
            if ip[9] == 17 && udp_port(udp) == Some(ESP_PORT) {
                5
            } else if side.protects(dst) {
                1
            } else {
                2
            }
        }
        (0x86dd, Some(dst)) => {
            if ip[6] == 17 && udp_port(40) == Some(ESP_PORT) {
                6
            } else if side.protects(dst) {
                3
            } else {
                4
            }
        }
        _ => 0,
    };
    tags * 7 + kind
}

/// One coverage edge per class (28), in a function of its own per side and action: libFuzzer
/// keeps an input that reaches a new (side, action, class), which the uninstrumented program
/// could not tell it.
#[inline(never)]
fn leaf<const SIDE: usize, const ACTION: u32>(class: usize) {
    macro_rules! edges {
        ($x:expr; $($n:literal)*) => {
            match $x {
                $($n => { std::hint::black_box($n); })*
                _ => {}
            }
        };
    }
    edges!(class; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27);
}

fn feedback(side: Side, action: u32, class: usize) {
    match (side, action) {
        (Side::Inner, XDP_PASS) => leaf::<0, XDP_PASS>(class),
        (Side::Inner, XDP_DROP) => leaf::<0, XDP_DROP>(class),
        (Side::Inner, _) => leaf::<0, XDP_REDIRECT>(class),
        (Side::InnerAll, XDP_PASS) => leaf::<1, XDP_PASS>(class),
        (Side::InnerAll, XDP_DROP) => leaf::<1, XDP_DROP>(class),
        (Side::InnerAll, _) => leaf::<1, XDP_REDIRECT>(class),
        (Side::Outer, XDP_PASS) => leaf::<2, XDP_PASS>(class),
        (Side::Outer, XDP_DROP) => leaf::<2, XDP_DROP>(class),
        (Side::Outer, _) => leaf::<2, XDP_REDIRECT>(class),
        (Side::OuterChecked, XDP_PASS) => leaf::<3, XDP_PASS>(class),
        (Side::OuterChecked, XDP_DROP) => leaf::<3, XDP_DROP>(class),
        (Side::OuterChecked, _) => leaf::<3, XDP_REDIRECT>(class),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(programs) = programs() else {
        return;
    };
    let [which, flags, sel, rest @ ..] = data else {
        return;
    };
    let side = Side::ALL[usize::from(*which) % 4];
    let frame: Vec<u8> = if flags & 128 != 0 {
        build(*flags, *sel, rest)
    } else {
        rest.to_vec()
    };
    let frame = &frame[..frame.len().min(MAX_FRAME)];
    if frame.len() < 14 {
        // The kernel refuses runs on less than an Ethernet header (and no driver passes one).
        return;
    }
    let mut out = Vec::new();
    let (action, len) = test_run(programs[side as usize].fd, frame, &mut out);
    assert!(
        matches!(action, XDP_PASS | XDP_DROP | XDP_REDIRECT),
        "{side:?}: action {action} on {frame:02x?}"
    );
    assert_eq!(
        len,
        frame.len(),
        "{side:?}: the program changed the frame's length"
    );
    assert_eq!(
        &out[..len],
        frame,
        "{side:?}: the program changed the frame"
    );
    feedback(side, action, class(frame, side));
    if side == Side::OuterChecked
        && let Some(spi) = esp_spi(frame)
        && !HELD_SPIS.contains(&spi)
    {
        assert_eq!(
            action, XDP_DROP,
            "{side:?}: ESP under SPI {spi:#x}, not held, was not dropped: {frame:02x?}"
        );
    }
    if !side.outer() && third_tag(frame) {
        assert_ne!(
            action, XDP_PASS,
            "{side:?}: a frame with a third VLAN tag was passed to the kernel: {frame:02x?}"
        );
    }
    if !side.outer()
        && let Some(dst) = ip_destination(frame)
        && side.protects(dst)
    {
        assert_ne!(
            action, XDP_PASS,
            "{side:?}: a frame to protected {dst} was passed to the kernel: {frame:02x?}"
        );
    }
});
