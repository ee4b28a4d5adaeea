//! pktcrypt's XDP program.
//!
//! Steers into the AF_XDP socket of the receiving queue (`XSKS`, redirect by RX queue index):
//! - on the outer interface (mode `MODE_STEER_ESP`): IPv4/IPv6 UDP packets to the configured
//!   ESP-in-UDP port;
//! - on the inner interface (mode `MODE_STEER_PREFIXES`): packets whose destination address lies in
//!   a protected prefix (`PREFIXES_V4`, `PREFIXES_V6`, longest-prefix match).
//!
//! Everything else (ARP, ND, other traffic) gets `XDP_PASS` untouched. Up to two VLAN tags
//! (802.1Q / 802.1ad) are skipped and the packet is classified by what follows; steered VLAN
//! packets keep their tags (the userspace side strips them). A frame with a third tag is dropped
//! on the plaintext side (fail closed: its destination is not read) and passed elsewhere. IPv6 extension headers (hop-by-hop,
//! routing, destination options: up to four, 512 bytes in all) are walked to the UDP header; a
//! first fragment (fragment header, offset 0) is classified by its UDP header like an IPv4 one,
//! later fragments are passed. Per-CPU counters count steered, passed and malformed packets,
//! and steering attempts that found no socket on their queue.
//!
//! **SPI check** (mode `MODE_CHECK_SPI`, the gateways' outer interface): ESP-in-UDP is steered
//! only under an SPI in `SPIS`, the SPIs the gateway holds, which its control thread keeps in
//! step before any key is announced; each is counted there per CPU (the evidence for retiring a
//! generation nobody uses any more). Unknown SPIs, NAT-keepalives, the non-ESP marker and
//! payloads too short for an ESP header are dropped here and counted, so a flood of them never
//! costs a worker anything.
//!
//! **Fail closed.** A packet to a protected prefix that finds no socket on its queue (the daemon
//! is starting, or a queue has no worker) is *dropped*: plaintext meant for the tunnel never
//! reaches the kernel's forwarding path. ESP-in-UDP without a socket is passed (it is ciphertext;
//! the kernel treats it as it treats any UDP datagram).
#![no_std]
#![no_main]

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie, PerCpuArray, PerCpuHashMap, XskMap};
use aya_ebpf::programs::XdpContext;
use pktcrypt_common::{DEFAULT_SPI_CAPACITY, XDP_COUNTER_SLOTS, XdpCounter, config};

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(64, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(config::LEN, 0);

#[map(name = "PREFIXES_V4")]
static PREFIXES_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "PREFIXES_V6")]
static PREFIXES_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_COUNTER_SLOTS, 0);

/// SPI → packets received under it (per CPU). The loader sets the capacity.
#[map(name = "SPIS")]
static SPIS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(DEFAULT_SPI_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// IPv6 extension headers walked at most (the userspace parser walks as many).
const MAX_IPV6_EXTENSIONS: usize = 4;
/// Bytes of IPv6 extension headers walked at most (keeps offsets in a range the verifier sees).
const MAX_IPV6_EXTENSION_BYTES: usize = 512;

#[inline(always)]
fn count(c: XdpCounter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: a per-CPU slot of this map: no other CPU writes it, and the pointer is valid
        // for the duration of the program.
        unsafe { *p += 1 };
    }
}

/// A bounds-checked pointer to `T` at `offset` in the packet, as the verifier requires.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at checked that size_of::<T>() bytes at p lie inside the packet; the read is
    // unaligned-safe.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

enum Verdict {
    /// ESP-in-UDP to the configured port: passed to the kernel if no socket takes it.
    SteerEsp,
    /// Plaintext to a protected prefix: dropped if no socket takes it (fail closed).
    SteerProtected,
    Pass,
    Malformed,
    /// To the ESP port but not to be steered (SPI check): dropped and counted.
    Drop(XdpCounter),
}

/// What to do with a UDP datagram to the ESP port whose UDP header starts at `udp`.
#[inline(always)]
fn esp_verdict(ctx: &XdpContext, udp: usize, mode: u32) -> Verdict {
    if mode & config::MODE_CHECK_SPI == 0 {
        return Verdict::SteerEsp;
    }
    let Some(udp_len) = read::<[u8; 2]>(ctx, udp + 4).map(u16::from_be_bytes) else {
        return Verdict::Malformed;
    };
    // The UDP length, not the frame: short frames carry Ethernet padding.
    let payload_len = (udp_len as usize).saturating_sub(8);
    let payload = udp + 8;
    // (Two bytes read, the payload's first and the one before: a one-byte bounds check compiles
    // to a comparison the verifier cannot use for a variable offset.)
    if payload_len == 1 && read::<[u8; 2]>(ctx, payload - 1).map(|b| b[1]) == Some(0xff) {
        return Verdict::Drop(XdpCounter::Keepalive);
    }
    let spi = if payload_len >= 4 {
        read::<[u8; 4]>(ctx, payload).map(u32::from_be_bytes)
    } else {
        None
    };
    if spi == Some(0) {
        return Verdict::Drop(XdpCounter::NotEsp);
    }
    // SPI and sequence number at least.
    let Some(spi) = spi.filter(|_| payload_len >= 8) else {
        return Verdict::Drop(XdpCounter::Truncated);
    };
    match SPIS.get_ptr_mut(&spi) {
        Some(p) => {
            // SAFETY: this CPU's value of the entry: no other CPU writes it, and the pointer
            // is valid for the duration of the program.
            unsafe { *p += 1 };
            Verdict::SteerEsp
        }
        None => Verdict::Drop(XdpCounter::UnknownSpi),
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Verdict {
    let mode = config(config::MODE);
    let port = config(config::ESP_PORT) as u16;
    let Some(mut proto) = read::<[u8; 2]>(ctx, 12).map(u16::from_be_bytes) else {
        return Verdict::Malformed;
    };
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags.
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let Some(inner) = read::<[u8; 2]>(ctx, l3 + 2).map(u16::from_be_bytes) else {
            return Verdict::Malformed;
        };
        proto = inner;
        l3 += 4;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        // A third tag: what follows is not parsed. On the plaintext side it could be a packet
        // to a protected prefix, which a kernel with stacked VLAN devices would forward in the
        // clear: dropped (fail closed). Elsewhere passed.
        return if mode & config::MODE_STEER_PREFIXES != 0 {
            Verdict::Drop(XdpCounter::Malformed)
        } else {
            Verdict::Malformed
        };
    }
    match proto {
        ETH_P_IP => {
            let Some(vihl) = read::<u8>(ctx, l3) else {
                return Verdict::Malformed;
            };
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Verdict::Malformed;
            }
            let Some(ip_proto) = read::<u8>(ctx, l3 + 9) else {
                return Verdict::Malformed;
            };
            let Some(dst) = read::<[u8; 4]>(ctx, l3 + 16) else {
                return Verdict::Malformed;
            };
            if mode & config::MODE_STEER_ESP != 0 && ip_proto == IPPROTO_UDP && port != 0 {
                // Bound the IHL so the verifier sees a fixed-range offset.
                if ihl > 60 {
                    return Verdict::Malformed;
                }
                let Some(frag) = read::<[u8; 2]>(ctx, l3 + 6).map(u16::from_be_bytes) else {
                    return Verdict::Malformed;
                };
                // A later fragment has no UDP header: the kernel reassembles or drops it.
                if frag & 0x1fff == 0 {
                    let udp = l3 + ihl;
                    let Some(dport) = read::<[u8; 2]>(ctx, udp + 2).map(u16::from_be_bytes) else {
                        return Verdict::Malformed;
                    };
                    if dport == port {
                        // A first fragment too: under a known SPI the workers count it.
                        return esp_verdict(ctx, udp, mode);
                    }
                }
            }
            if mode & config::MODE_STEER_PREFIXES != 0
                && PREFIXES_V4.get(Key::new(32, dst)).is_some()
            {
                return Verdict::SteerProtected;
            }
            Verdict::Pass
        }
        ETH_P_IPV6 => {
            let Some(mut next) = read::<u8>(ctx, l3 + 6) else {
                return Verdict::Malformed;
            };
            let Some(dst) = read::<[u8; 16]>(ctx, l3 + 24) else {
                return Verdict::Malformed;
            };
            if mode & config::MODE_STEER_ESP != 0 && port != 0 {
                let mut at = 40usize;
                for _ in 0..MAX_IPV6_EXTENSIONS {
                    if next != IPV6_HOP_BY_HOP
                        && next != IPV6_ROUTING
                        && next != IPV6_DEST_OPTS
                        && next != IPV6_FRAGMENT
                    {
                        break;
                    }
                    if at > MAX_IPV6_EXTENSION_BYTES {
                        return Verdict::Malformed;
                    }
                    let Some(hdr) = read::<[u8; 4]>(ctx, l3 + at) else {
                        return Verdict::Malformed;
                    };
                    if next == IPV6_FRAGMENT {
                        // Offset (13 bits) and the M flag: a later fragment has no UDP header.
                        if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                            next = 0xff;
                            break;
                        }
                        at += 8;
                    } else {
                        at += (hdr[1] as usize + 1) * 8;
                    }
                    next = hdr[0];
                }
                if next == IPPROTO_UDP && at <= MAX_IPV6_EXTENSION_BYTES + 2048 {
                    let udp = l3 + at;
                    let Some(dport) = read::<[u8; 2]>(ctx, udp + 2).map(u16::from_be_bytes) else {
                        return Verdict::Malformed;
                    };
                    if dport == port {
                        return esp_verdict(ctx, udp, mode);
                    }
                }
            }
            if mode & config::MODE_STEER_PREFIXES != 0
                && PREFIXES_V6.get(Key::new(128, dst)).is_some()
            {
                return Verdict::SteerProtected;
            }
            Verdict::Pass
        }
        _ => Verdict::Pass,
    }
}

/// The program.
#[xdp]
pub fn pktcrypt_xdp(ctx: XdpContext) -> u32 {
    let fallback = match classify(&ctx) {
        Verdict::SteerEsp => xdp_action::XDP_PASS,
        Verdict::SteerProtected => xdp_action::XDP_DROP,
        Verdict::Pass => {
            count(XdpCounter::Passed);
            return xdp_action::XDP_PASS;
        }
        Verdict::Malformed => {
            count(XdpCounter::Malformed);
            return xdp_action::XDP_PASS;
        }
        Verdict::Drop(counter) => {
            count(counter);
            return xdp_action::XDP_DROP;
        }
    };
    // The low bits of the flags are the action when the queue has no socket.
    match XSKS.redirect(ctx.rx_queue_index(), fallback as u64) {
        Ok(action) => {
            count(XdpCounter::Steered);
            action
        }
        Err(_) => {
            count(XdpCounter::NoSocket);
            fallback
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
