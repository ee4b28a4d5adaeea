//! AES-GCM (NIST SP 800-38D, as used in ESP by RFC 4106) assembled from the `aes`, `ctr` and
//! `ghash` crates.
//!
//! `aes` picks AES-NI, VAES-256 or VAES-512 at run time; `ctr` drives it in 32-bit big-endian
//! counter mode; `ghash` (PCLMULQDQ) authenticates. Single packets run CTR then GHASH over the
//! ciphertext while it is still in L1. Batches of small packets build the counter blocks of many
//! packets into one scratch array and encrypt them with a single `aes` call, so the 16..64-block
//! wide VAES pipeline is full even when each packet is only a few blocks long.

use super::{AeadItem, AuthError, NONCE_LEN, TAG_LEN};
use aes::cipher::{
    Block, BlockCipherEncrypt, BlockSizeUser, InnerIvInit, KeyInit, StreamCipherCore, consts::U16,
};
use ghash::{GHash, universal_hash::UniversalHash};
use subtle::ConstantTimeEq;

type AesBlock = Block<aes::Aes128>;

/// Number of AES blocks the batch path encrypts per `aes` call (1 KiB of stack).
const SCRATCH_BLOCKS: usize = 64;

pub(super) struct AesGcm<A> {
    cipher: A,
    ghash: GHash,
}

impl AesGcm<aes::Aes128> {
    pub(super) fn new_128(key: &[u8]) -> Self {
        Self::from_cipher(aes::Aes128::new_from_slice(key).expect("key length checked by caller"))
    }
}

impl AesGcm<aes::Aes256> {
    pub(super) fn new_256(key: &[u8]) -> Self {
        Self::from_cipher(aes::Aes256::new_from_slice(key).expect("key length checked by caller"))
    }
}

/// J0 = nonce ‖ 0x00000001 (NIST SP 800-38D §7.1 for 96-bit IVs).
fn j0(nonce: &[u8; NONCE_LEN]) -> AesBlock {
    let mut block = AesBlock::default();
    block[..NONCE_LEN].copy_from_slice(nonce);
    block[15] = 1;
    block
}

/// Writes the counter blocks J0, J0+1, ... (32-bit big-endian increment) into `blocks`.
fn fill_counters(nonce: &[u8; NONCE_LEN], blocks: &mut [AesBlock]) {
    let mut counter = j0(nonce);
    let mut c = 1u32;
    for block in blocks {
        counter[12..].copy_from_slice(&c.to_be_bytes());
        *block = counter;
        c = c.wrapping_add(1);
    }
}

/// XORs `keystream` into `data`; `keystream` is at least as long as `data`.
#[inline]
fn xor_in_place(data: &mut [u8], keystream: &[u8]) {
    // A plain byte loop: LLVM vectorizes it to full-width XORs.
    for (d, k) in data.iter_mut().zip(keystream) {
        *d ^= *k;
    }
}

impl<A> AesGcm<A>
where
    A: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    fn from_cipher(cipher: A) -> Self {
        let mut h = ghash::Key::default();
        cipher.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        h.iter_mut().for_each(|b| *b = 0);
        Self { cipher, ghash }
    }

    /// GHASH(AAD, C) ⊕ E(J0).
    fn tag(&self, mask: &[u8], aad: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
        let mut ghash = self.ghash.clone();
        ghash.update_padded(aad);
        ghash.update_padded(ciphertext);
        let mut lengths = ghash::Block::default();
        lengths[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(ciphertext.len() as u64 * 8).to_be_bytes());
        ghash.update(&[lengths]);
        let mut tag: [u8; TAG_LEN] = ghash.finalize().into();
        tag.iter_mut().zip(mask).for_each(|(t, m)| *t ^= m);
        tag
    }

    fn ctr(&self, nonce: &[u8; NONCE_LEN]) -> (ctr::CtrCore<&A, ctr::flavors::Ctr32BE>, AesBlock) {
        let mut ctr =
            ctr::CtrCore::<&A, ctr::flavors::Ctr32BE>::inner_iv_init(&self.cipher, &j0(nonce));
        let mut mask = AesBlock::default();
        ctr.write_keystream_block(&mut mask);
        (ctr, mask)
    }

    /// Keystream for one packet of `len` bytes in one `aes` call (E(J0) first), if it fits.
    fn small_keystream(
        &self,
        nonce: &[u8; NONCE_LEN],
        len: usize,
        scratch: &mut [AesBlock; SCRATCH_BLOCKS],
    ) -> Option<usize> {
        let need = 1 + len.div_ceil(16);
        if need > SCRATCH_BLOCKS {
            return None;
        }
        fill_counters(nonce, &mut scratch[..need]);
        self.cipher.encrypt_blocks(&mut scratch[..need]);
        Some(need)
    }

    pub(super) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        // Small packets: one `aes` call for mask and keystream (each call into `aes` has a fixed
        // cost of ~75 ns on this VAES machine; see the README's benchmark notes).
        let mut scratch = [AesBlock::default(); SCRATCH_BLOCKS];
        if let Some(need) = self.small_keystream(nonce, data.len(), &mut scratch) {
            xor_in_place(data, AesBlock::slice_as_flattened(&scratch[1..need]));
            let tag = self.tag(&scratch[0], aad, data);
            zeroize::Zeroize::zeroize(AesBlock::slice_as_flattened_mut(&mut scratch[..need]));
            return tag;
        }
        let (ctr, mask) = self.ctr(nonce);
        ctr.apply_keystream_partial(data.into());
        self.tag(&mask, aad, data)
    }

    pub(super) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let mut scratch = [AesBlock::default(); SCRATCH_BLOCKS];
        if let Some(need) = self.small_keystream(nonce, data.len(), &mut scratch) {
            let ok = bool::from(self.tag(&scratch[0], aad, data).ct_eq(tag));
            if ok {
                xor_in_place(data, AesBlock::slice_as_flattened(&scratch[1..need]));
            }
            zeroize::Zeroize::zeroize(AesBlock::slice_as_flattened_mut(&mut scratch[..need]));
            return if ok { Ok(()) } else { Err(AuthError) };
        }
        let (ctr, mask) = self.ctr(nonce);
        let expected = self.tag(&mask, aad, data);
        if bool::from(expected.ct_eq(tag)) {
            ctr.apply_keystream_partial(data.into());
            Ok(())
        } else {
            Err(AuthError)
        }
    }

    /// Fills `scratch` with the keystream (E(J0), E(J0+1), ...) of as many leading items as fit,
    /// returning how many items it covered (inactive ones count as covered and use no blocks).
    /// Returns 0 if the first active item alone does not fit.
    fn batch_keystream<I: AeadItem>(
        &self,
        items: &[I],
        scratch: &mut [AesBlock; SCRATCH_BLOCKS],
    ) -> usize {
        let mut used = 0;
        let mut covered = 0;
        for item in items {
            if item.active() {
                let need = 1 + item.data_len().div_ceil(16);
                if used + need > SCRATCH_BLOCKS {
                    break;
                }
                fill_counters(item.nonce(), &mut scratch[used..used + need]);
                used += need;
            }
            covered += 1;
        }
        self.cipher.encrypt_blocks(&mut scratch[..used]);
        covered
    }

    /// Runs `each(item, mask, keystream)` over every active item, with the keystream generated
    /// for many items at once where they fit in the scratch array, and one at a time otherwise.
    fn batch<I: AeadItem>(
        &self,
        mut items: &mut [I],
        mut each: impl FnMut(&Self, &mut I, Option<(&[u8], &[u8])>),
    ) {
        let mut scratch = [AesBlock::default(); SCRATCH_BLOCKS];
        while !items.is_empty() {
            let covered = self.batch_keystream(items, &mut scratch);
            if covered == 0 {
                each(self, &mut items[0], None);
                items = &mut items[1..];
                continue;
            }
            let (now, rest) = items.split_at_mut(covered);
            let mut offset = 0;
            for item in now.iter_mut().filter(|i| i.active()) {
                let blocks = item.data_len().div_ceil(16);
                let mask = &scratch[offset][..];
                let ks = AesBlock::slice_as_flattened(&scratch[offset + 1..offset + 1 + blocks]);
                each(self, item, Some((mask, ks)));
                offset += 1 + blocks;
            }
            items = rest;
        }
        zeroize::Zeroize::zeroize(AesBlock::slice_as_flattened_mut(&mut scratch));
    }

    pub(super) fn seal_batch<I: AeadItem>(&self, items: &mut [I]) {
        self.batch(items, |this, item, keystream| {
            let nonce = *item.nonce();
            let (aad, data, tag) = item.parts();
            *tag = match keystream {
                Some((mask, ks)) => {
                    xor_in_place(data, ks);
                    this.tag(mask, aad, data)
                }
                None => this.seal(&nonce, aad, data),
            };
        });
    }

    pub(super) fn open_batch<I: AeadItem>(&self, items: &mut [I]) {
        self.batch(items, |this, item, keystream| {
            let nonce = *item.nonce();
            let (aad, data, tag) = item.parts();
            let ok = match keystream {
                Some((mask, ks)) => {
                    let ok = bool::from(this.tag(mask, aad, data).ct_eq(&tag[..]));
                    if ok {
                        xor_in_place(data, ks);
                    }
                    ok
                }
                None => this.open(&nonce, aad, data, tag).is_ok(),
            };
            item.set_authentic(ok);
        });
    }
}
