//! systemd's readiness protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the Unix
//! socket named by `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). Without
//! that variable (not started by systemd with `Type=notify`) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `"READY=1\nSTATUS=..."`) to the service manager, if there is one.
/// Failures are logged, never fatal: the daemon works the same without a manager.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)
        } else {
            s.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "NOTIFY_SOCKET: could not tell the service manager");
    }
}
