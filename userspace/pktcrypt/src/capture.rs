//! `pktcrypt capture`: a pcap file of the outer packets a running gateway receives and sends.
//!
//! `tcpdump` on a gateway's own interfaces shows none of its tunnel traffic: XDP hands what
//! arrives to the AF_XDP sockets before the kernel's packet taps, and AF_XDP transmits past
//! them. The workers' tap ([`pktcrypt_io::gateway::tap`]) sees it: the keys socket (mode 0600)
//! answers `capture [count=N] [seconds=S] [snaplen=N]` with a pcap stream (libpcap's classic
//! file format, nanosecond timestamps, Ethernet link type, written here by hand: a 24-byte file
//! header, then a 16-byte header before each frame) of the frames the workers receive on the
//! outer interface (before they are opened) and send on it (sealed), until the count or the
//! time is reached or the reader goes away. One capture at a time; a frame that finds the
//! capture's queue full (a reader slower than the traffic) is not captured, and the daemon logs
//! how many were not.
//!
//! The command side copies the stream to a file (or standard output, for `tshark -r -` or
//! `wireshark -k -i -`), whole records only, and with `--keys FILE` writes the ESP SA table of
//! `export-keys` taken before and after the capture next to it, so Wireshark can decrypt it.

use crate::config::{self, GatewayFile};
use crate::endpoints;
use crate::wireshark::Format;
use pktcrypt_io::gateway::tap::{Captured, Tap};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// libpcap's magic for nanosecond timestamps (written little-endian).
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Default and largest snap length: a whole frame.
const SNAPLEN: u32 = 65_535;
/// Frames waiting for the reader at most (beyond: not captured, counted).
const QUEUE: usize = 16_384;
/// How long the daemon waits for a frame before flushing and checking the reader.
const POLL: Duration = Duration::from_millis(200);
/// Longest a write to the reader may block (a stalled reader ends the capture).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a capture request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Stop after this many frames.
    pub(crate) count: Option<u64>,
    /// Stop after this long.
    pub(crate) seconds: Option<u64>,
    /// Bytes kept of each frame.
    pub(crate) snaplen: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            count: None,
            seconds: None,
            snaplen: SNAPLEN,
        }
    }
}

impl Limits {
    /// Parses `count=N seconds=S snaplen=N` (any order, each at most once, all optional).
    pub(crate) fn parse(args: &str) -> Result<Self, String> {
        let mut l = Limits::default();
        let mut seen = Vec::new();
        for word in args.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?}: expected KEY=VALUE"))?;
            if seen.contains(&key) {
                return Err(format!("{key} given twice"));
            }
            seen.push(key);
            let n: u64 = value
                .parse()
                .map_err(|_| format!("{key}: expected a whole number, got {value:?}"))?;
            match key {
                "count" if n > 0 => l.count = Some(n),
                "seconds" if n > 0 => l.seconds = Some(n),
                "snaplen" if (64..=u64::from(SNAPLEN)).contains(&n) => l.snaplen = n as u32,
                "count" | "seconds" => return Err(format!("{key}: must be at least 1")),
                "snaplen" => return Err(format!("snaplen: must be in 64..={SNAPLEN}")),
                _ => return Err(format!("unknown limit {key:?} (count, seconds, snaplen)")),
            }
        }
        Ok(l)
    }

    /// The request line's arguments.
    fn request(&self) -> String {
        let mut r = format!("snaplen={}", self.snaplen);
        if let Some(n) = self.count {
            r.push_str(&format!(" count={n}"));
        }
        if let Some(s) = self.seconds {
            r.push_str(&format!(" seconds={s}"));
        }
        r
    }
}

/// The pcap file header.
pub(crate) fn file_header(snaplen: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&MAGIC_NS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone 0, sigfigs 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// One record: its header and the frame up to `snaplen` bytes.
pub(crate) fn write_record(
    out: &mut impl Write,
    time: SystemTime,
    frame: &[u8],
    snaplen: u32,
) -> std::io::Result<()> {
    let t = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let kept = frame.len().min(snaplen as usize);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(t.as_secs() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&t.subsec_nanos().to_le_bytes());
    h[8..12].copy_from_slice(&(kept as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
    out.write_all(&h)?;
    out.write_all(&frame[..kept])
}

/// The daemon's side: serves one `capture` request on the keys socket (its arguments in
/// `args`) from `tap`, writing pcap to `stream` until a limit is reached or the reader leaves.
pub(crate) fn serve(stream: &UnixStream, tap: &Arc<Tap>, args: &str) {
    let text = |msg: String| {
        let mut s = stream;
        let _ = s.write_all(format!("capture: {msg}\n").as_bytes());
    };
    let limits = match Limits::parse(args) {
        Ok(l) => l,
        Err(e) => return text(e),
    };
    let Some(session) = tap.start(QUEUE) else {
        return text("another capture is running (one at a time)".into());
    };
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    // Liveness: the reader sends nothing after its request; end of file means it left.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
    let start = Instant::now();
    let deadline = limits.seconds.map(|s| start + Duration::from_secs(s));
    let mut out = BufWriter::with_capacity(1 << 16, stream);
    let mut written = 0u64;
    let result = (|| -> std::io::Result<&'static str> {
        out.write_all(&file_header(limits.snaplen))?;
        out.flush()?;
        loop {
            if limits.count.is_some_and(|c| written >= c) {
                return Ok("count reached");
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => left.min(POLL),
                    None => return Ok("time reached"),
                },
                None => POLL,
            };
            match session.frames.recv_timeout(wait) {
                Ok(Captured { time, frame, .. }) => {
                    write_record(&mut out, time, &frame, limits.snaplen)?;
                    written += 1;
                    if session.frames.is_empty() {
                        out.flush()?;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    out.flush()?;
                    let mut probe = [0u8; 1];
                    let mut reader: &UnixStream = out.get_ref();
                    if matches!(reader.read(&mut probe), Ok(0)) {
                        return Ok("the reader left");
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Ok("the tap closed");
                }
            }
        }
    })();
    let _ = out.flush();
    let dropped = session.dropped();
    drop(session);
    let why = result.unwrap_or("the reader stopped reading");
    if dropped > 0 {
        tracing::warn!(
            frames = written,
            not_captured = dropped,
            "capture ended ({why}); frames were not captured: the reader was slower than the \
             traffic"
        );
    } else {
        tracing::info!(frames = written, "capture ended ({why})");
    }
}

/// `pktcrypt capture` options.
struct Options {
    /// The keys socket.
    socket: PathBuf,
    /// Where the pcap goes (`-`: standard output).
    write: PathBuf,
    /// Where the ESP SA table goes, if anywhere.
    keys: Option<PathBuf>,
    format: Format,
    limits: Limits,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut socket = None;
        let mut write = None;
        let mut keys = None;
        let mut format = Format::default();
        let mut limits = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--socket" => socket = Some(PathBuf::from(value)),
                "--config" => socket = Some(keys_socket(Path::new(value))?),
                "-w" | "--write" => write = Some(PathBuf::from(value)),
                "--keys" => keys = Some(PathBuf::from(value)),
                "--format" => format = Format::from_name(value)?,
                "--count" | "--seconds" | "--snaplen" => {
                    limits.push(format!("{}={value}", &flag[2..]));
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(Self {
            socket: socket.ok_or("--config FILE or --socket KEYS_PATH is required")?,
            write: write.ok_or("--write FILE (or - for standard output) is required")?,
            keys,
            format,
            limits: Limits::parse(&limits.join(" "))?,
        })
    }
}

/// The keys socket of the gateway configured in `path`.
fn keys_socket(path: &Path) -> Result<PathBuf, String> {
    let file: GatewayFile = config::load(path)?;
    let Some(data_path) = file.role.data_path() else {
        return Err("a group controller has no data path to capture".into());
    };
    let name = file.daemon.name.unwrap_or_else(|| "pktcrypt".into());
    let status = file
        .daemon
        .status_socket
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    Ok(data_path
        .keys_socket
        .clone()
        .unwrap_or_else(|| endpoints::default_keys_socket(&status)))
}

/// Connects to the keys socket and sends `request`.
fn connect(socket: &Path, request: &str) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e} (is `pktcrypt up` running?)", socket.display()))?;
    writeln!(s, "{request}").map_err(|e| format!("{}: {e}", socket.display()))?;
    Ok(s)
}

/// The ESP SA table now.
fn export_keys(socket: &Path, format: Format) -> Result<zeroize::Zeroizing<String>, String> {
    let mut s = connect(socket, &format!("export-keys {}", format.name()))?;
    let mut text = zeroize::Zeroizing::new(String::with_capacity(1 << 16));
    s.read_to_string(&mut text)
        .map_err(|e| format!("export-keys: {e}"))?;
    Ok(text)
}

/// `pktcrypt capture --config FILE | --socket KEYS_PATH --write FILE|- [--count N]
/// [--seconds N] [--snaplen N] [--keys FILE [--format F]]`: returns a summary line.
pub(crate) fn run(args: &[String], stop: &AtomicBool) -> Result<String, String> {
    let o = Options::parse(args)?;
    // Keys as the capture starts (the ESN high bits Wireshark must assume are these)...
    let before = o
        .keys
        .as_ref()
        .map(|_| export_keys(&o.socket, o.format))
        .transpose()?;
    let mut stream = connect(&o.socket, &format!("capture {}", o.limits.request()))?;
    let mut header = [0u8; 24];
    read_full(&mut stream, &mut header, stop)
        .map_err(|e| format!("{}: {e}", o.socket.display()))?;
    if header[..4] != MAGIC_NS.to_le_bytes() {
        let mut text = String::from_utf8_lossy(&header).into_owned();
        let _ = stream.read_to_string(&mut text);
        return Err(text.trim().to_string());
    }
    let mut out: Box<dyn Write> = if o.write == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&o.write).map_err(|e| format!("{}: {e}", o.write.display()))?,
        )
    };
    let werr = |e: std::io::Error| format!("{}: {e}", o.write.display());
    out.write_all(&header).map_err(werr)?;
    out.flush().map_err(werr)?;
    // Whole records only, so the file stays readable whenever the copy stops.
    let mut frames = 0u64;
    let mut record = Vec::with_capacity(SNAPLEN as usize + 16);
    loop {
        record.resize(16, 0);
        match read_full(&mut stream, &mut record[..16], stop) {
            Ok(()) => {}
            Err(Ended::Eof | Ended::Stopped) => break,
            Err(Ended::Io(e)) => return Err(format!("{}: {e}", o.socket.display())),
        }
        let len = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        if len > SNAPLEN as usize {
            return Err(format!("{}: a record of {len} bytes", o.socket.display()));
        }
        record.resize(16 + len, 0);
        match read_full(&mut stream, &mut record[16..], stop) {
            Ok(()) => {}
            Err(Ended::Eof | Ended::Stopped) => break,
            Err(Ended::Io(e)) => return Err(format!("{}: {e}", o.socket.display())),
        }
        out.write_all(&record).map_err(werr)?;
        frames += 1;
        out.flush().map_err(werr)?;
    }
    drop(stream);
    let mut summary = format!(
        "pktcrypt capture: {frames} outer frames written to {}",
        o.write.display()
    );
    // ... and after it (generations installed meanwhile); a record of both once.
    if let (Some(path), Some(before)) = (&o.keys, before) {
        let after = export_keys(&o.socket, o.format)?;
        let mut table = zeroize::Zeroizing::new(String::with_capacity(before.len() + after.len()));
        let mut seen: Vec<String> = Vec::new();
        for line in before.lines().chain(after.lines()) {
            // One record per SA (by protocol, addresses and SPI: the first four columns), each
            // comment once.
            let id = if line.starts_with('#') {
                line.to_string()
            } else {
                line.split(',').take(4).collect::<Vec<_>>().join(",")
            };
            if !seen.contains(&id) {
                seen.push(id);
                table.push_str(line);
                table.push('\n');
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(table.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        summary.push_str(&format!(
            "; ESP SA table ({}) in {}",
            o.format.name(),
            path.display()
        ));
    }
    Ok(summary)
}

/// Why a read ended early.
enum Ended {
    /// The daemon closed the stream.
    Eof,
    /// SIGINT or SIGTERM.
    Stopped,
    Io(std::io::Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Eof => f.write_str("closed by the daemon"),
            Ended::Stopped => f.write_str("stopped"),
            Ended::Io(e) => e.fmt(f),
        }
    }
}

/// Fills `buf` from `stream`, checking `stop` at least every 250 ms.
fn read_full(stream: &mut UnixStream, buf: &mut [u8], stop: &AtomicBool) -> Result<(), Ended> {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let mut at = 0;
    while at < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return Err(Ended::Stopped);
        }
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(Ended::Eof),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Ended::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_round_trip() {
        assert_eq!(Limits::parse(""), Ok(Limits::default()));
        let l = Limits::parse("seconds=5 count=100 snaplen=128").expect("limits");
        assert_eq!(
            l,
            Limits {
                count: Some(100),
                seconds: Some(5),
                snaplen: 128
            }
        );
        assert_eq!(Limits::parse(&l.request()), Ok(l));
        for bad in [
            "count=0",
            "snaplen=10",
            "count=1 count=2",
            "count",
            "bytes=5",
            "count=x",
        ] {
            assert!(Limits::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pcap_is_libpcaps_classic_format() {
        let h = file_header(128);
        // Little-endian nanosecond magic, version 2.4, snap length, Ethernet.
        assert_eq!(&h[..8], &[0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0]);
        assert_eq!(u32::from_le_bytes([h[16], h[17], h[18], h[19]]), 128);
        assert_eq!(u32::from_le_bytes([h[20], h[21], h[22], h[23]]), 1);
        let frame: Vec<u8> = (0..200u8).collect();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut out = Vec::new();
        write_record(&mut out, t, &frame, 128).expect("record");
        assert_eq!(out.len(), 16 + 128, "truncated to the snap length");
        let u = |i: usize| u32::from_le_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
        assert_eq!(
            (u(0), u(4), u(8), u(12)),
            (1_700_000_000, 123_456_789, 128, 200)
        );
        assert_eq!(&out[16..], &frame[..128]);
    }
}
