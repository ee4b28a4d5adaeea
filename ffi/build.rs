//! The shared library's SONAME: `libpktcrypt.so.0`, the ABI version (`PKTCRYPT_ABI_VERSION` in
//! `src/lib.rs`). Programs linked against it record that name, so a library of another ABI is
//! never loaded in its place; `make -C ffi install` installs it as `libpktcrypt.so.0.x.y` with
//! the `libpktcrypt.so.0` and `libpktcrypt.so` links.

/// Keep equal to `PKTCRYPT_ABI_VERSION` (a unit test checks).
const ABI_VERSION: u32 = 0;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libpktcrypt.so.{ABI_VERSION}");
    }
    println!("cargo::rustc-env=PKTCRYPT_SONAME_ABI={ABI_VERSION}");
}
