//! The endpoints of a running daemon: the status socket (`pktcrypt status`), the keys socket
//! (`pktcrypt export-keys`, `pktcrypt capture`) and the Prometheus metrics port.
//!
//! Every input is bounded: at most [`MAX_CONNECTIONS`] connections per endpoint are served at
//! once (one thread each; more are closed at once), a request is read for at most [`DEADLINE`]
//! and [`REQUEST_LIMIT`] bytes, and every read and write times out. A client that connects and
//! never sends, or sends an endless line, costs one slot for two seconds and nothing else.
//!
//! The sockets are created with their final mode (the umask is set around `bind`): status 0660,
//! keys 0600 (separate sockets, so monitoring needs no access to keys). The key text is never
//! cached: the control thread renders it for each request, and it is wiped after it is written.
//! A capture (`crate::capture`) holds its connection for as long as it runs, one at a time.

use crate::wireshark::Format;
use crossbeam_channel::Sender;
use pktcrypt_io::gateway::tap::Tap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Connections served at once per endpoint.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Longest request read (a command line, or an HTTP request head).
pub(crate) const REQUEST_LIMIT: usize = 8192;
/// Longest time spent reading one request.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);
/// Timeout of each read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Mode of the status socket.
pub(crate) const STATUS_MODE: u32 = 0o660;
/// Mode of the keys socket.
pub(crate) const KEYS_MODE: u32 = 0o600;

/// What the metrics endpoint serves, refreshed by the control thread.
#[derive(Default)]
pub(crate) struct Published {
    /// The Prometheus text.
    pub(crate) metrics: String,
}

/// What a request asks the control thread for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    /// The status document, as of now.
    Status,
    /// The key text, as Wireshark's ESP SA table in this format (keys socket only).
    Keys(Format),
    /// Apply the configuration file as it is now (keys socket only); the answer says what
    /// changed, or `error: ...`.
    Reload,
    /// Rotate keys now (keys socket only; a group controller's status socket): one peer by
    /// name, or every one; the answer says what was asked, or `error: ...`.
    Rekey(Option<String>),
}

/// A request to the control thread, which answers on the channel (the status document is
/// rendered for each request: never stale).
pub(crate) type Request = (Ask, std::sync::mpsc::SyncSender<Zeroizing<String>>);

/// Whether the other end of a Unix socket is root or this process's effective user.
fn privileged(s: &std::os::unix::net::UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(s)
        .is_ok_and(|c| c.uid.is_root() || c.uid == rustix::process::geteuid())
}

/// `rekey [PEER]` as a request.
fn rekey_ask(req: &str) -> Ask {
    Ask::Rekey(
        req.split_once(' ')
            .map(|(_, peer)| peer.trim().to_owned())
            .filter(|p| !p.is_empty()),
    )
}

/// Asks the control thread and waits at most [`DEADLINE`].
fn ask(requests: &Sender<Request>, what: Ask) -> Option<Zeroizing<String>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    requests.send((what, tx)).ok()?;
    rx.recv_timeout(DEADLINE).ok()
}

/// Reads a one-line command from a Unix socket client, with timeouts set.
fn read_command(s: &mut std::os::unix::net::UnixStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let req = read_request(s, b"\n")?;
    Some(String::from_utf8_lossy(&req).trim().to_string())
}

/// The keys socket for a status socket: `NAME.sock` → `NAME.keys.sock`, same directory.
pub(crate) fn default_keys_socket(status: &Path) -> PathBuf {
    let stem = status
        .file_stem()
        .map_or_else(|| "pktcrypt".into(), |s| s.to_string_lossy().into_owned());
    status.with_file_name(format!("{stem}.keys.sock"))
}

/// Binds a Unix socket at `path` with exactly `mode` from the start.
fn bind_unix(path: &Path, mode: u32, field: &str) -> Result<UnixListener, String> {
    use rustix::fs::Mode;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{field}: creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    // The umask is process-wide; nothing else in the daemon creates files.
    let old = rustix::process::umask(Mode::from_bits_truncate(0o777 & !mode));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| format!("{field}: {}: {e}", path.display()))?;
    let actual = std::fs::metadata(path)
        .map_err(|e| format!("{field}: {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if actual != mode {
        return Err(format!(
            "{field}: {} has mode {actual:o}, not {mode:o}",
            path.display()
        ));
    }
    Ok(listener)
}

/// Reads one request: up to `terminator`, [`REQUEST_LIMIT`] bytes and [`DEADLINE`]. `None` if
/// the client did not finish in time or sent too much.
fn read_request(stream: &mut impl Read, terminator: &[u8]) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if start.elapsed() > DEADLINE {
            return None;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return (!buf.is_empty()).then_some(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(terminator.len()).any(|w| w == terminator) {
            return Some(buf);
        }
        if buf.len() >= REQUEST_LIMIT {
            return None;
        }
    }
}

/// Accepts connections from `incoming` and serves each on its own thread, at most
/// [`MAX_CONNECTIONS`] at once (others are closed unanswered).
fn accept_loop<S, A, F>(name: &str, mut accept: A, serve: F) -> Result<(), String>
where
    S: Send + 'static,
    A: FnMut() -> std::io::Result<S> + Send + 'static,
    F: Fn(S) + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let active = Arc::new(AtomicUsize::new(0));
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                let Ok(stream) = accept() else {
                    // EMFILE and the like: do not spin on it.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (serve, active2) = (Arc::clone(&serve), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name(format!("{thread}-conn"))
                    .spawn(move || {
                        serve(stream);
                        active2.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Starts the endpoints. `requests`: where status and key requests go (the control thread);
/// `keys`: the keys socket's path, `None` for a role without keys to export; `tap`: the
/// workers' capture tap, `None` for a role without a data path.
pub(crate) fn serve(
    status_path: &Path,
    keys: Option<&Path>,
    tap: Option<Arc<Tap>>,
    requests: Sender<Request>,
    metrics: Option<SocketAddr>,
    published: Arc<Mutex<Published>>,
) -> Result<(), String> {
    let listener = bind_unix(status_path, STATUS_MODE, "status_socket")?;
    let keys_hint = keys.map(|p| p.display().to_string());
    let p = Arc::clone(&published);
    let status_requests = requests.clone();
    accept_loop(
        "pktcrypt-status",
        move || listener.accept().map(|(s, _)| s),
        move |mut s| {
            let Some(req) = read_command(&mut s) else {
                return;
            };
            // The command is the first word (`export-keys wireshark-4.0`).
            let command = req.split_once(' ').map_or(req.as_str(), |(c, _)| c);
            let reply = match command {
                "status" => ask(&status_requests, Ask::Status)
                    .map_or_else(|| "status unavailable\n".into(), |t| t.to_string()),
                "metrics" => p
                    .lock()
                    .map_or_else(|_| "metrics unavailable\n".into(), |p| p.metrics.clone()),
                // A role without a keys socket (a group controller) reloads and rekeys through
                // this one: a reload reveals nothing (it applies the root-owned file), but the
                // socket is group-accessible (0660), so only root or the daemon's own user may
                // change anything through it (SO_PEERCRED).
                "reload" | "rekey" if keys_hint.is_none() && !privileged(&s) => format!(
                    "error: only root or the daemon's user may {command} through the \
                     status socket\n"
                ),
                "reload" if keys_hint.is_none() => ask(&status_requests, Ask::Reload)
                    .map_or_else(|| "reload unavailable\n".into(), |t| t.to_string()),
                "rekey" if keys_hint.is_none() => ask(&status_requests, rekey_ask(&req))
                    .map_or_else(|| "rekey unavailable\n".into(), |t| t.to_string()),
                "export-keys" | "capture" | "reload" | "rekey" => match &keys_hint {
                    Some(path) => format!("{command}: ask the keys socket, {path}\n"),
                    None => format!("{command}: this role has no data path\n"),
                },
                other => format!("unknown command {other:?}\n"),
            };
            let _ = s.write_all(reply.as_bytes());
        },
    )?;
    if let Some(path) = keys {
        let listener = bind_unix(path, KEYS_MODE, "keys_socket")?;
        accept_loop(
            "pktcrypt-keys",
            move || listener.accept().map(|(s, _)| s),
            move |mut s| {
                let Some(req) = read_command(&mut s) else {
                    return;
                };
                let (command, args) = req.split_once(' ').unwrap_or((&req, ""));
                match command {
                    "export-keys" => {
                        let format = match args {
                            "" => Ok(Format::default()),
                            name => Format::from_name(name),
                        };
                        match format {
                            Ok(format) => {
                                if let Some(text) = ask(&requests, Ask::Keys(format)) {
                                    let _ = s.write_all(text.as_bytes());
                                    // `text` is wiped when dropped here.
                                }
                            }
                            Err(e) => {
                                let _ = s.write_all(format!("export-keys: {e}\n").as_bytes());
                            }
                        }
                    }
                    "reload" => {
                        if let Some(text) = ask(&requests, Ask::Reload) {
                            let _ = s.write_all(text.as_bytes());
                        }
                    }
                    "rekey" => {
                        if let Some(text) = ask(&requests, rekey_ask(&req)) {
                            let _ = s.write_all(text.as_bytes());
                        }
                    }
                    "capture" => match &tap {
                        Some(tap) => crate::capture::serve(&s, tap, args),
                        None => {
                            let _ = s.write_all(b"capture: this role has no data path\n");
                        }
                    },
                    _ => {
                        let _ = s.write_all(
                            b"unknown command (the keys socket answers export-keys, capture, reload and rekey)\n",
                        );
                    }
                }
            },
        )?;
    }
    if let Some(addr) = metrics {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("metrics: binding {addr}: {e}"))?;
        accept_loop(
            "pktcrypt-metrics",
            move || listener.accept().map(|(s, _)| s),
            move |mut s| {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                let Some(head) =
                    read_request(&mut s, b"\r\n\r\n").filter(|h| h.starts_with(b"GET "))
                else {
                    let _ = s.write_all(
                    b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                    return;
                };
                drop(head);
                let body = published
                    .lock()
                    .map(|p| p.metrics.clone())
                    .unwrap_or_default();
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    crate::metrics::CONTENT_TYPE,
                    body.len()
                );
            },
        )?;
    }
    Ok(())
}
