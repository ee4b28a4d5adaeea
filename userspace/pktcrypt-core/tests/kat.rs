//! Known-answer tests: every suite, every backend, single and batched, against published vectors.
//!
//! - AES-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 2, 3, 4, 14, 15
//!   and 16 (96-bit IVs, 16-byte tags).
//! - AES-GCM in ESP: draft-mcgrew-gcm-test-01 (ESN case: SPI 0x4321, ESN 0x87654321_00000000).
//! - ChaCha20-Poly1305: RFC 8439 §2.8.2 and the ESP example of RFC 7634 Appendix A.

use pktcrypt_core::aead::{AeadItem, Backend, NONCE_LEN, TAG_LEN};
use pktcrypt_core::wire::esp::{self, EspHeader};
use pktcrypt_core::{DropReason, Suite};

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("valid hex in test vector")
}

struct Vector {
    name: &'static str,
    suite: Suite,
    key: &'static str,
    nonce: &'static str,
    aad: &'static str,
    plain: &'static str,
    /// Ciphertext followed by the 16-byte tag.
    sealed: &'static str,
}

const GCM_P: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                     1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const GCM_P60: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
const GCM_K: &str = "feffe9928665731c6d6a8f9467308308";
const GCM_IV: &str = "cafebabefacedbaddecaf888";
const GCM_A: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";

const VECTORS: &[Vector] = &[
    Vector {
        name: "McGrew-Viega TC2 (AES-128, zero key)",
        suite: Suite::Aes128Gcm,
        key: "00000000000000000000000000000000",
        nonce: "000000000000000000000000",
        aad: "",
        plain: "00000000000000000000000000000000",
        sealed: "0388dace60b6a392f328c2b971b2fe78 ab6e47d42cec13bdf53a67b21257bddf",
    },
    Vector {
        name: "McGrew-Viega TC3 (AES-128)",
        suite: Suite::Aes128Gcm,
        key: GCM_K,
        nonce: GCM_IV,
        aad: "",
        plain: GCM_P,
        sealed: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985
                 4d5c2af327cd64a62cf35abd2ba6fab4",
    },
    Vector {
        name: "McGrew-Viega TC4 (AES-128, AAD, partial block)",
        suite: Suite::Aes128Gcm,
        key: GCM_K,
        nonce: GCM_IV,
        aad: GCM_A,
        plain: GCM_P60,
        sealed: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091
                 5bc94fbc3221a5db94fae95ae7121a47",
    },
    Vector {
        name: "McGrew-Viega TC14 (AES-256, zero key)",
        suite: Suite::Aes256Gcm,
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        nonce: "000000000000000000000000",
        aad: "",
        plain: "00000000000000000000000000000000",
        sealed: "cea7403d4d606b6e074ec5d3baf39d18 d0d1c8a799996bf0265b98b5d48ab919",
    },
    Vector {
        name: "McGrew-Viega TC15 (AES-256)",
        suite: Suite::Aes256Gcm,
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        nonce: GCM_IV,
        aad: "",
        plain: GCM_P,
        sealed: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad
                 b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        name: "McGrew-Viega TC16 (AES-256, AAD, partial block)",
        suite: Suite::Aes256Gcm,
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        nonce: GCM_IV,
        aad: GCM_A,
        plain: GCM_P60,
        sealed: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662
                 76fc6ece0f4e1768cddf8853bb2d551b",
    },
    Vector {
        name: "RFC 8439 §2.8.2 (ChaCha20-Poly1305)",
        suite: Suite::ChaCha20Poly1305,
        key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
        nonce: "070000004041424344454647",
        aad: "50515253c0c1c2c3c4c5c6c7",
        plain: "4c616469657320616e642047656e746c656d656e206f662074686520636c6173
                73206f66202739393a204966204920636f756c64206f6666657220796f75206f
                6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73
                637265656e20776f756c642062652069742e",
        sealed: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                 3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                 92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                 3ff4def08e4b7a9de576d26586cec64b6116
                 1ae10b594f09e26a7e902ecbd0600691",
    },
];

fn check_vector(backend: Backend, v: &Vector) {
    let key = backend.key(v.suite, &h(v.key)).expect("vector key length");
    let nonce: [u8; NONCE_LEN] = h(v.nonce).try_into().expect("12-byte nonce");
    let aad = h(v.aad);
    let plain = h(v.plain);
    let sealed = h(v.sealed);
    let (ct, tag) = sealed.split_at(plain.len());

    let mut buf = plain.clone();
    let out_tag = key.seal(&nonce, &aad, &mut buf);
    assert_eq!(buf, ct, "{} ({}): ciphertext", v.name, backend.name());
    assert_eq!(&out_tag[..], tag, "{} ({}): tag", v.name, backend.name());

    key.open(&nonce, &aad, &mut buf, &out_tag)
        .unwrap_or_else(|_| panic!("{} ({}): open", v.name, backend.name()));
    assert_eq!(buf, plain, "{} ({}): round trip", v.name, backend.name());

    let mut forged = out_tag;
    forged[0] ^= 1;
    let mut buf = ct.to_vec();
    assert!(key.open(&nonce, &aad, &mut buf, &forged).is_err());
    if !plain.iter().all(|b| *b == 0) {
        assert_ne!(buf, plain, "a failed open must never release plaintext");
    }
}

#[test]
fn published_vectors_single() {
    for backend in Backend::all() {
        for v in VECTORS {
            check_vector(*backend, v);
        }
    }
}

/// A batch item for the vectors: owns its buffers.
struct Item {
    nonce: [u8; NONCE_LEN],
    aad: Vec<u8>,
    data: Vec<u8>,
    tag: [u8; TAG_LEN],
    ok: bool,
}

impl AeadItem for Item {
    fn active(&self) -> bool {
        true
    }
    fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
    fn parts(&mut self) -> (&[u8], &mut [u8], &mut [u8; TAG_LEN]) {
        (&self.aad, &mut self.data, &mut self.tag)
    }
    fn set_authentic(&mut self, ok: bool) {
        self.ok = ok;
    }
}

/// The batch path (many packets' keystream in one AES call) gives the same bytes.
#[test]
fn published_vectors_batched() {
    for backend in Backend::all() {
        for suite in Suite::ALL {
            let vs: Vec<&Vector> = VECTORS.iter().filter(|v| v.suite == suite).collect();
            let key = backend.key(suite, &h(vs[0].key)).expect("key");
            // Every vector of the suite that shares the first vector's key, repeated so the
            // batch spans several scratch refills.
            let same_key: Vec<&&Vector> = vs.iter().filter(|v| v.key == vs[0].key).collect();
            let mut items: Vec<Item> = (0..12)
                .map(|i| {
                    let v = same_key[i % same_key.len()];
                    Item {
                        nonce: h(v.nonce).try_into().expect("nonce"),
                        aad: h(v.aad),
                        data: h(v.plain),
                        tag: [0; TAG_LEN],
                        ok: false,
                    }
                })
                .collect();
            key.seal_batch(&mut items);
            for (i, item) in items.iter().enumerate() {
                let v = same_key[i % same_key.len()];
                let mut sealed = item.data.clone();
                sealed.extend_from_slice(&item.tag);
                assert_eq!(
                    sealed,
                    h(v.sealed),
                    "{} ({}) batched",
                    v.name,
                    backend.name()
                );
            }
            items[3].tag[5] ^= 0x80;
            key.open_batch(&mut items);
            for (i, item) in items.iter().enumerate() {
                let v = same_key[i % same_key.len()];
                if i == 3 {
                    assert!(!item.ok, "forged tag in a batch must fail");
                } else {
                    assert!(item.ok, "{} batched open", v.name);
                    assert_eq!(item.data, h(v.plain));
                }
            }
        }
    }
}

/// Opens a complete ESP packet given raw keymat, using the crate's own header, AAD, nonce and
/// trailer code: the same functions the engine runs.
fn open_esp(
    backend: Backend,
    suite: Suite,
    keymat: &[u8],
    esn_high: Option<u32>,
    packet: &[u8],
) -> (Vec<u8>, Result<(usize, esp::NextHeader), DropReason>) {
    let (key, salt) = keymat.split_at(suite.key_len());
    let key = backend.key(suite, key).expect("key");
    let header = EspHeader::parse(packet).expect("ESP header");
    let seq = (u64::from(esn_high.unwrap_or(0)) << 32) | u64::from(header.seq_low);
    let mut aad = [0u8; 12];
    let aad_len = esp::aad(header.spi, seq, esn_high.is_some(), &mut aad);
    let nonce = esp::nonce(salt.try_into().expect("salt"), header.iv);
    let (body, tag) = packet[esp::ESP_HEADER_LEN..].split_at(packet.len() - 32);
    let mut plain = body.to_vec();
    key.open(
        &nonce,
        &aad[..aad_len],
        &mut plain,
        tag.try_into().expect("tag"),
    )
    .expect("ESP packet authenticates");
    let trailer = esp::parse_trailer(&plain);
    (plain, trailer)
}

/// RFC 7634 Appendix A: an ICMP echo inside ESP with ChaCha20-Poly1305.
#[test]
fn rfc7634_esp_example() {
    let keymat = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3");
    let inner = h(
        "4500005 4a6f200004001e778c6336405c000020508005b7a3a080000553bec10
                   000736270809 0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223
                   2425262728292a2b2c2d2e2f3031323334353637",
    );
    let mut packet = h("01020304 00000005 1011121314151617");
    packet.extend(h(
        "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6
                     14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3
                     cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7
                     b11b369907e1ad43",
    ));
    for backend in Backend::all() {
        let (plain, trailer) = open_esp(*backend, Suite::ChaCha20Poly1305, &keymat, None, &packet);
        assert_eq!(trailer, Ok((84, esp::NextHeader::Ipv4)));
        assert_eq!(&plain[..84], &inner[..]);
        // Our trailer writer produces the RFC's trailer bytes (padding 01 02, length 2, 4).
        let mut area = inner.clone();
        area.resize(84 + 4, 0);
        assert_eq!(esp::write_trailer(&mut area, 84, esp::NextHeader::Ipv4), 88);
        assert_eq!(area, plain);
    }
}

/// draft-mcgrew-gcm-test-01, the AES-128-GCM case with a 64-bit extended sequence number.
/// Its inner packet uses next header 1 (transport-mode ICMP), which pktcrypt does not carry:
/// the packet must authenticate and decrypt, and the trailer is then refused by name.
#[test]
fn draft_mcgrew_gcm_esp_with_esn() {
    let keymat = h("4c80cdefbb5d10da906ac73c3613a634 2e443b68");
    let mut packet = h("00004321 00000000 4956ed7e3b244cfe");
    packet.extend(h(
        "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34
                     cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce
                     61bc17d768fd9732459018148f6cbe722fd04796562dfdb4",
    ));
    let plain_expected = h(
        "45000048699a000080114db7c0a80102c0a801010a9bf15638d30100000100
                            0000000000045f736970045f756470037369700963796265726369
                            7479 02646b0000210001 01020201",
    );
    for backend in Backend::all() {
        let (plain, trailer) = open_esp(
            *backend,
            Suite::Aes128Gcm,
            &keymat,
            Some(0x8765_4321),
            &packet,
        );
        assert_eq!(plain, plain_expected);
        assert_eq!(trailer, Err(DropReason::BadNextHeader));
    }
}
