//! `pktcrypt export-keys`: the current SAs as Wireshark's ESP SA table (the `esp_sa` UAT file,
//! or `-o uat:esp_sa:...` records for tshark), in the format of the Wireshark that reads it.
//!
//! Two formats:
//! - [`Format::Wireshark`] (the default): the table of current Wireshark, ten columns
//!   ([`FIELDS`]): protocol, source, destination, SPI, encryption and its key, authentication
//!   and its key, the sequence-number length (`"64-bit"` with ESN, so the ESN's high half enters
//!   the ICV check and 64-bit ESN packets authenticate) and the ESN's high 32 bits where the
//!   capture starts. AES-GCM and ChaCha20-Poly1305.
//! - [`Format::Wireshark40`] (`--format wireshark-4.0`): the eight-column table of Wireshark
//!   4.0 (Debian 12 ships tshark 4.0.17), which has no sequence-number columns and no
//!   ChaCha20-Poly1305 in ESP. It decrypts AES-GCM; it authenticates only SAs without ESN
//!   (`esn = false` on both gateways: its AAD is SPI ‖ 32-bit sequence number). A ChaCha20 SA
//!   becomes a comment line (no key), and a note says when ESN is on.
//!
//! Lines starting with `#` are comments to Wireshark's UAT reader. The key text is written
//! straight into the caller's buffer (a [`zeroize::Zeroizing`] string sized for all of it), so
//! no unwiped copy of a key is left behind.

use pktcrypt_core::{SaExport, Suite};
use std::fmt::Write as _;
use std::net::IpAddr;

/// The columns of current Wireshark's ESP SA table, in order: the titles of `esp_uat_flds` in
/// `proto_register_ipsec` (Wireshark's `epan/dissectors/packet-ipsec.c`, since renamed
/// `packet-esp.c`; read at commit 1134444c of a mirror of the Wireshark repository):
/// `UAT_FLD_VS(.., protocol, "Protocol", ..)`, `UAT_FLD_CSTRING(.., srcIP, "Src IP", ..)`,
/// `dstIP "Dest IP"`, `spi "SPI"`, `UAT_FLD_VS(.., encryption_algo, "Encryption", ..)`,
/// `encryption_key_string "Encryption Key"`, `authentication_algo "Authentication"`,
/// `authentication_key_string "Authentication Key"`, `UAT_FLD_VS(.., sn_length, "SN", ..)`
/// (`esp_sn_length_vals`: `"32-bit"`, `"64-bit"`; default `"32-bit"`) and
/// `UAT_FLD_HEX(.., sn_upper, "ESN High Bits", ..)` (default `"0"`).
pub(crate) const FIELDS: [&str; 10] = [
    "Protocol",
    "Src IP",
    "Dest IP",
    "SPI",
    "Encryption",
    "Encryption Key",
    "Authentication",
    "Authentication Key",
    "SN",
    "ESN High Bits",
];

/// The columns of Wireshark 4.0's table: the first eight of [`FIELDS`].
pub(crate) const FIELDS_4_0: [&str; 8] = [
    "Protocol",
    "Src IP",
    "Dest IP",
    "SPI",
    "Encryption",
    "Encryption Key",
    "Authentication",
    "Authentication Key",
];

/// Which Wireshark reads the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// Current Wireshark: ten columns, ESN and ChaCha20-Poly1305.
    #[default]
    Wireshark,
    /// Wireshark 4.0: eight columns, AES-GCM only, no ESN.
    Wireshark40,
}

impl Format {
    /// Every format.
    pub(crate) const ALL: [Format; 2] = [Format::Wireshark, Format::Wireshark40];

    /// Its name on the command line (`--format NAME`) and on the keys socket.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Format::Wireshark => "wireshark",
            Format::Wireshark40 => "wireshark-4.0",
        }
    }

    /// The format named `name`.
    pub(crate) fn from_name(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {name:?} (one of {})", names.join(", "))
            })
    }

    /// The encryption algorithm's name in this format's table, `None` if that Wireshark cannot
    /// decrypt the suite.
    fn encryption(self, suite: Suite) -> Option<&'static str> {
        match (self, suite) {
            (Format::Wireshark40, Suite::ChaCha20Poly1305) => None,
            // Both tables name AES-GCM with a 16-byte ICV the same way, whatever the key length
            // (Wireshark takes the AES variant from the key's length, less the 4-byte salt).
            _ => Some(suite.wireshark_name()),
        }
    }

    /// Bytes of key text per record at most (for sizing the caller's buffer): the quoted
    /// fields with the longest names, addresses and keys.
    pub(crate) const fn record_capacity() -> usize {
        320
    }
}

/// One SA, one direction: its record (one line), in `format`. `src` and `dst` are the outer
/// addresses of the packets it protects.
pub(crate) fn write_record(
    out: &mut String,
    format: Format,
    sa: &SaExport,
    src: IpAddr,
    dst: IpAddr,
) {
    let spi = sa.spi.get();
    let Some(encryption) = format.encryption(sa.suite) else {
        let _ = writeln!(
            out,
            "# {src} -> {dst} SPI {spi:#010x}: {}, which Wireshark 4.0 cannot decrypt (the \
             default format, for a newer Wireshark, has it)",
            sa.suite.name()
        );
        return;
    };
    let protocol = match src {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    let _ = write!(
        out,
        "\"{protocol}\",\"{src}\",\"{dst}\",\"{spi:#010x}\",\"{encryption}\",\"0x"
    );
    for b in sa.keymat.iter() {
        let _ = write!(out, "{b:02x}");
    }
    // AEAD: the ICV is checked with the decryption (Wireshark's "NULL" authentication).
    out.push_str("\",\"NULL\",\"\"");
    if format == Format::Wireshark {
        let (length, high) = if sa.esn {
            ("64-bit", sa.seq >> 32)
        } else {
            ("32-bit", 0)
        };
        let _ = write!(out, ",\"{length}\",\"{high:x}\"");
    }
    out.push('\n');
}

/// The table's opening comment: which format, its columns, and what the reader must know.
pub(crate) fn write_header(out: &mut String, format: Format, any_esn: bool) {
    let columns: &[&str] = match format {
        Format::Wireshark => &FIELDS,
        Format::Wireshark40 => &FIELDS_4_0,
    };
    let _ = writeln!(
        out,
        "# pktcrypt export-keys --format {}: Wireshark's ESP SA table (esp_sa): {}",
        format.name(),
        columns.join(", ")
    );
    if format == Format::Wireshark40 && any_esn {
        out.push_str(
            "# These SAs use 64-bit ESN: Wireshark 4.0 decrypts them but reports their ICV bad. \
             Set esn = false on both gateways for it to authenticate them.\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pktcrypt_core::{Direction, Spi};

    /// Current Wireshark's names for the `Protocol` column (`esp_proto_type_vals`).
    const PROTOCOLS: [&str; 3] = ["IPv4", "IPv6", "Any"];
    /// Current Wireshark's names for the `Encryption` column (`esp_encryption_type_vals`).
    const ENCRYPTIONS: [&str; 15] = [
        "NULL",
        "TripleDES-CBC [RFC2451]",
        "AES-CBC [RFC3602]",
        "AES-CTR [RFC3686]",
        "DES-CBC [RFC2405]",
        "CAST5-CBC [RFC2144]",
        "BLOWFISH-CBC [RFC2451]",
        "TWOFISH-CBC",
        "AES-GCM [RFC4106]",
        "AES-GCM with 8 octet ICV [RFC4106]",
        "AES-GCM with 12 octet ICV [RFC4106]",
        "AES-GCM with 16 octet ICV [RFC4106]",
        "AES-GCM with IIV and 16 octet ICV [RFC4106 & RFC8750]",
        "ChaCha20 with Poly1305 [RFC7634]",
        "ChaCha20 with Poly1305 and IIV [RFC7634 & RFC8750]",
    ];
    /// Wireshark 4.0.17's AES-GCM names (its `esp_encryption_type_vals` has no ChaCha20).
    const ENCRYPTIONS_4_0: [&str; 4] = [
        "AES-GCM [RFC4106]",
        "AES-GCM with 8 octet ICV [RFC4106]",
        "AES-GCM with 12 octet ICV [RFC4106]",
        "AES-GCM with 16 octet ICV [RFC4106]",
    ];
    /// The `Authentication` column's name for none (AEAD).
    const AUTH_NULL: &str = "NULL";
    /// The `SN` column (`esp_sn_length_vals`).
    const SN_LENGTHS: [&str; 2] = ["32-bit", "64-bit"];

    fn sa(suite: Suite, esn: bool, seq: u64) -> SaExport {
        let keymat = (0..suite.key_len() + suite.salt_len())
            .map(|i| i as u8)
            .collect::<Vec<u8>>();
        SaExport {
            spi: Spi::new(0x1234_5678).expect("spi"),
            suite,
            generation: 3,
            direction: Direction::ClientToServer,
            outbound: true,
            esn,
            seq,
            keymat: zeroize::Zeroizing::new(keymat),
        }
    }

    /// A record's fields: the line split at `","` (no field here holds a quote or a comma).
    fn fields(line: &str) -> Vec<&str> {
        line.strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .expect("quoted")
            .split("\",\"")
            .collect()
    }

    fn record(format: Format, sa: &SaExport, src: &str, dst: &str) -> String {
        let mut out = String::new();
        write_record(
            &mut out,
            format,
            sa,
            src.parse().expect("src"),
            dst.parse().expect("dst"),
        );
        out
    }

    #[test]
    fn the_current_format_has_wiresharks_ten_columns_with_valid_values() {
        for suite in Suite::ALL {
            for (esn, seq, high) in [(true, 5, "0"), (true, (7 << 32) + 9, "7"), (false, 5, "0")] {
                let sa = sa(suite, esn, seq);
                for (src, dst, proto) in [
                    ("192.0.2.1", "192.0.2.2", "IPv4"),
                    ("2001:db8::1", "2001:db8::2", "IPv6"),
                ] {
                    let text = record(Format::Wireshark, &sa, src, dst);
                    assert_eq!(text.lines().count(), 1, "{text}");
                    let f = fields(text.trim_end());
                    assert_eq!(f.len(), FIELDS.len(), "{text}");
                    assert!(PROTOCOLS.contains(&f[0]) && f[0] == proto, "{text}");
                    assert_eq!((f[1], f[2]), (src, dst));
                    assert_eq!(f[3], "0x12345678");
                    assert!(ENCRYPTIONS.contains(&f[4]), "{}: {text}", f[4]);
                    let key = f[5].strip_prefix("0x").expect("hex key");
                    assert_eq!(key.len(), 2 * (suite.key_len() + 4), "key and salt");
                    assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
                    assert_eq!((f[6], f[7]), (AUTH_NULL, ""));
                    assert!(SN_LENGTHS.contains(&f[8]));
                    assert_eq!(f[8], if esn { "64-bit" } else { "32-bit" });
                    assert_eq!(f[9], high);
                    u32::from_str_radix(f[9], 16).expect("ESN high bits: hex");
                }
            }
        }
        // The suites' names: what Wireshark's decryption switch knows.
        let name = |s| {
            fields(record(Format::Wireshark, &sa(s, true, 1), "192.0.2.1", "192.0.2.2").trim_end())
                [4]
            .to_string()
        };
        assert_eq!(
            name(Suite::Aes128Gcm),
            "AES-GCM with 16 octet ICV [RFC4106]"
        );
        assert_eq!(
            name(Suite::Aes256Gcm),
            "AES-GCM with 16 octet ICV [RFC4106]"
        );
        assert_eq!(
            name(Suite::ChaCha20Poly1305),
            "ChaCha20 with Poly1305 [RFC7634]"
        );
    }

    #[test]
    fn the_4_0_format_has_eight_columns_and_no_chacha20() {
        for esn in [true, false] {
            for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm] {
                let text = record(
                    Format::Wireshark40,
                    &sa(suite, esn, 1),
                    "192.0.2.1",
                    "192.0.2.2",
                );
                let f = fields(text.trim_end());
                assert_eq!(f.len(), FIELDS_4_0.len(), "{text}");
                assert!(ENCRYPTIONS_4_0.contains(&f[4]), "{text}");
                assert_eq!((f[6], f[7]), (AUTH_NULL, ""));
            }
            let text = record(
                Format::Wireshark40,
                &sa(Suite::ChaCha20Poly1305, esn, 1),
                "192.0.2.1",
                "192.0.2.2",
            );
            assert!(text.starts_with('#') && !text.contains("0x0001"), "{text}");
            assert_eq!(text.lines().count(), 1);
        }
        assert_eq!(&FIELDS[..8], &FIELDS_4_0[..]);
    }

    #[test]
    fn records_fit_the_capacity_and_formats_parse() {
        let long = sa(Suite::ChaCha20Poly1305, true, u64::MAX);
        for format in Format::ALL {
            let text = record(
                format,
                &long,
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
            );
            assert!(
                text.len() <= Format::record_capacity(),
                "{} bytes",
                text.len()
            );
            assert_eq!(Format::from_name(format.name()), Ok(format));
        }
        assert!(Format::from_name("wireshark-3.6").is_err());
        let mut header = String::new();
        write_header(&mut header, Format::Wireshark40, true);
        assert!(header.lines().all(|l| l.starts_with('#')));
    }
}
