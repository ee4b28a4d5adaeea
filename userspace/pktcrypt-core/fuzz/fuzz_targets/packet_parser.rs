//! Arbitrary bytes through every parser of the wire module: outer IPv4/IPv6 + UDP, the
//! ESP-in-UDP classifier, the ESP header and the trailer. None may panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pktcrypt_core::wire::{esp, ip};

fuzz_target!(|data: &[u8]| {
    if let Ok(udp) = ip::parse_udp(data) {
        let payload = &data[udp.payload.clone()];
        if ip::classify_udp_payload(payload).is_ok() {
            let _ = esp::EspHeader::parse(payload);
        }
    }
    let _ = esp::EspHeader::parse(data);
    let _ = esp::parse_trailer(data);
    if let Some(&first) = data.first() {
        let _ = esp::NextHeader::from_value(first);
    }
});
