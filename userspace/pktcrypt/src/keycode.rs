//! QR rendering of init-key text codes (the codes themselves: `pktcrypt_core::keycode`).

pub(crate) use pktcrypt_core::keycode::{decode, encode};

/// Renders a text code as a QR code for a terminal (two rows of modules per line).
pub(crate) fn qr(code: &str) -> Result<String, String> {
    let qr = qrcode::QrCode::new(code.as_bytes()).map_err(|e| format!("QR encoding: {e}"))?;
    Ok(qr
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn qr_renders() {
        let key = pktcrypt_core::Generation {
            info: pktcrypt_core::GenerationInfo {
                number: 0,
                spi: pktcrypt_core::Spi::new(0x1000).expect("spi"),
                suite: pktcrypt_core::Suite::Aes128Gcm,
            },
            secret: pktcrypt_core::Secret::from_bytes([1; 32]),
        };
        let q = super::qr(&super::encode(&key)).expect("qr");
        assert!(q.lines().count() > 10);
    }
}
