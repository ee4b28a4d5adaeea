//! The command line: every subcommand of `pktcrypt` with its options and help (clap's derive
//! API). Shell completions (`pktcrypt completions SHELL`) and man pages (`pktcrypt man`) are
//! generated from these same definitions, so they cannot drift from what the binary accepts.

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// After every command's help.
const LOGS: &str = "Logs go to standard error through `tracing`; PKTCRYPT_LOG (or RUST_LOG) \
filters them, e.g. PKTCRYPT_LOG=debug or PKTCRYPT_LOG=warn (default: info). Key material is \
never logged. Configuration: docs/cli.md.";

/// pktcrypt: a kernel-bypass packet encryptor (ESP-in-UDP over XDP and AF_XDP) with hitless
/// rekeys.
///
/// A gateway (`pktcrypt up`) encrypts the traffic between its inner and outer interfaces; the
/// control-plane roles also run alone over UDP (`pktcrypt server`, `client`,
/// `group-controller`, `group-member`). `pktcrypt show` is the operator's view of a running
/// gateway.
#[derive(Debug, Parser)]
#[command(
    name = "pktcrypt",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = LOGS
)]
pub(crate) struct Cli {
    /// The command.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A key server and a client over ESP-in-UDP on 127.0.0.1 through N key rotations
    ///
    /// The packet engine alone, without XDP or root: each round mints a generation (one
    /// distribution is lost on purpose), traffic flows both ways, and bad input is shown
    /// dropped and counted.
    Demo(DemoArgs),
    /// New init keys as text codes (pkc1-..., one per line)
    Keygen(KeygenArgs),
    /// Run a key server over UDP (the control plane alone, no XDP)
    Server(ConfigArgs),
    /// Run a key server's client over UDP
    Client(ConfigArgs),
    /// Run a group controller over UDP
    GroupController(ConfigArgs),
    /// Run a group member over UDP
    GroupMember(ConfigArgs),
    /// Run a gateway (XDP + AF_XDP workers); its programs stay attached when it stops
    ///
    /// The file's `role` says what it is: `server`, `client`, `group-member` (with a data path
    /// between `inner` and `outer`) or `group-controller` (none). Stopped by SIGINT or
    /// SIGTERM; the XDP programs stay on the interfaces and drop protected traffic (fail
    /// closed) until the next `pktcrypt up` or `pktcrypt down`.
    Up(ConfigArgs),
    /// Remove the XDP programs a gateway left on its interfaces
    Down(ConfigArgs),
    /// Check a configuration file without touching interfaces or sockets
    ///
    /// Reads the file as `pktcrypt up` (a file with `role = ...`) or as the UDP role it is
    /// written for, loads its init keys (an `init_key = "prompt"` is not asked for), and checks
    /// what the daemon would check at start that needs no interface, socket or XDP program:
    /// unknown keys, bad values, prefixes, duplicate keys, indices. Exits 1 with a message
    /// naming the field, 0 printing what the file configures.
    Check(CheckArgs),
    /// Show running gateways: peers, keys, traffic (the operator's view)
    ///
    /// Per gateway its role, interfaces, addresses and uptime; per peer its address,
    /// prefixes, current key generation (SPI, suite, whether from a key exchange, its age),
    /// the next rekey, the last packet received, transfer and drop counters. Without
    /// --config or --socket: every gateway whose status socket is in /run/pktcrypt.
    Show(ShowArgs),
    /// A running gateway's status document (JSON; the same as `pktcrypt show --json`)
    Status(StatusArgs),
    /// The current SAs of a running gateway as Wireshark's ESP SA table (secrets: read from
    /// its 0600 keys socket)
    ExportKeys(ExportArgs),
    /// Apply a running gateway's changed configuration file (peers and prefixes) without a
    /// restart; SIGHUP does the same. A change that needs a restart is refused, naming the key
    Reload(KeysTarget),
    /// Rotate keys now: a key server rotates PEER (every client without one) at its next
    /// packet, a client asks its key server for a new generation, a group controller rolls a
    /// new group key out; the log says "rekey triggered" with reason "operator"
    Rekey(RekeyArgs),
    /// Write a pcap of the outer packets a running gateway receives and sends (tcpdump on the
    /// gateway sees none of them: AF_XDP bypasses the kernel's taps)
    Capture(CaptureArgs),
    /// Attach the XDP steering program to an interface, print its counters, detach on exit
    XdpAttach(XdpAttachArgs),
    /// Print a shell completion script
    ///
    /// For example: `pktcrypt completions bash >
    /// /usr/share/bash-completion/completions/pktcrypt`, `pktcrypt completions zsh >
    /// /usr/share/zsh/vendor-completions/_pktcrypt`, `pktcrypt completions fish >
    /// /usr/share/fish/vendor_completions.d/pktcrypt.fish`.
    Completions(CompletionsArgs),
    /// Write the man pages (pktcrypt.1 and pktcrypt-COMMAND.1 for each command)
    Man(ManArgs),
}

/// `pktcrypt demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Key rotations
    #[arg(long, value_name = "N", default_value = "4")]
    pub(crate) rounds: String,
    /// Packets each way per rotation
    #[arg(long, value_name = "N", default_value = "200")]
    pub(crate) packets: String,
}

/// `pktcrypt keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// How many keys
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) count: usize,
    /// Their suite: aes-128-gcm, aes-256-gcm, chacha20-poly1305
    #[arg(long, value_name = "NAME", default_value = "aes-256-gcm")]
    pub(crate) suite: String,
    /// The SPI of the first key (decimal or 0x hex), then consecutive ones (default: random)
    #[arg(long, value_name = "BASE")]
    pub(crate) spi: Option<String>,
    /// Also print each as a QR code (on standard error)
    #[arg(long)]
    pub(crate) qr: bool,
    /// Write them to a new file, mode 0600 (instead of standard output)
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Replace an existing --out file (its keys are lost)
    #[arg(long, requires = "out")]
    pub(crate) force: bool,
}

/// A daemon's configuration file.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The configuration file (TOML; see docs/cli.md)
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// `pktcrypt check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The configuration file
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// The UDP role a file without `role = ...` is for (default: guessed from its keys)
    #[arg(long, value_name = "ROLE", value_parser = ["server", "client", "group-controller", "group-member"])]
    pub(crate) role: Option<String>,
}

/// `pktcrypt show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The gateway's configuration file (its status_socket, else /run/pktcrypt/NAME.sock)
    #[arg(long, value_name = "FILE", conflicts_with = "socket")]
    pub(crate) config: Option<PathBuf>,
    /// The gateway's status socket
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// The status document as JSON (schema_version 1), as `pktcrypt status` gives it
    #[arg(long)]
    pub(crate) json: bool,
}

/// `pktcrypt status`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct StatusArgs {
    /// The gateway's configuration file (its status_socket, else /run/pktcrypt/NAME.sock)
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The gateway's status socket
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
}

/// Which running gateway's keys socket to ask.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct KeysTarget {
    /// The gateway's configuration file (its keys_socket, else NAME.keys.sock beside the
    /// status socket)
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The gateway's keys socket
    #[arg(long, value_name = "KEYS_PATH")]
    pub(crate) socket: Option<PathBuf>,
}

/// `pktcrypt rekey`.
#[derive(Debug, Args)]
pub(crate) struct RekeyArgs {
    #[command(flatten)]
    pub(crate) target: KeysTarget,
    /// A key server's client, by its configured name (default: every client)
    #[arg(value_name = "PEER")]
    pub(crate) peer: Option<String>,
}

/// `pktcrypt export-keys`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) target: KeysTarget,
    /// `wireshark` (current Wireshark: with the ESN fields and ChaCha20-Poly1305) or
    /// `wireshark-4.0` (Debian 12's tshark)
    #[arg(long, value_name = "FORMAT", default_value = "wireshark")]
    pub(crate) format: String,
}

/// `pktcrypt capture`.
#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    #[command(flatten)]
    pub(crate) target: KeysTarget,
    /// The pcap file (`-`: standard output, e.g. into `wireshark -k -i -`)
    #[arg(long, short = 'w', value_name = "FILE")]
    pub(crate) write: PathBuf,
    /// Stop after this many packets
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Stop after this many seconds
    #[arg(long, value_name = "N")]
    pub(crate) seconds: Option<u64>,
    /// Bytes kept of each packet
    #[arg(long, value_name = "N")]
    pub(crate) snaplen: Option<u32>,
    /// Also write the ESP SA table (at the start and the end) to this file
    #[arg(long, value_name = "FILE")]
    pub(crate) keys: Option<PathBuf>,
    /// The table's format (see `export-keys --format`)
    #[arg(long, value_name = "FORMAT", requires = "keys")]
    pub(crate) format: Option<String>,
}

impl CaptureArgs {
    /// As the capture module reads them.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |k: &str, val: String| {
            v.push(k.to_string());
            v.push(val);
        };
        if let Some(c) = &self.target.config {
            push("--config", c.display().to_string());
        }
        if let Some(s) = &self.target.socket {
            push("--socket", s.display().to_string());
        }
        push("--write", self.write.display().to_string());
        if let Some(n) = self.count {
            push("--count", n.to_string());
        }
        if let Some(n) = self.seconds {
            push("--seconds", n.to_string());
        }
        if let Some(n) = self.snaplen {
            push("--snaplen", n.to_string());
        }
        if let Some(k) = &self.keys {
            push("--keys", k.display().to_string());
        }
        if let Some(f) = &self.format {
            push("--format", f.clone());
        }
        v
    }
}

/// `pktcrypt xdp-attach`.
#[derive(Debug, Args)]
pub(crate) struct XdpAttachArgs {
    /// The interface
    #[arg(long, value_name = "IF")]
    pub(crate) iface: String,
    /// A compiled XDP program (default: $PKTCRYPT_XDP_OBJECT, else the one embedded in the
    /// binary)
    #[arg(long, value_name = "PATH")]
    pub(crate) object: Option<PathBuf>,
    /// Steer UDP to this port (ESP-in-UDP) into the AF_XDP sockets
    #[arg(long, value_name = "PORT")]
    pub(crate) esp_port: Option<u16>,
    /// Steer packets to this prefix (repeatable)
    #[arg(long, value_name = "ADDR/LEN")]
    pub(crate) prefix: Vec<String>,
    /// Detach after N seconds (default: at SIGINT or SIGTERM)
    #[arg(long, value_name = "N")]
    pub(crate) seconds: Option<u64>,
}

/// `pktcrypt completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// `pktcrypt man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write every page into this directory (default: pktcrypt.1 alone, on standard output)
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// The `clap` command, for completions and man pages.
pub(crate) fn command() -> clap::Command {
    Cli::command()
}

/// `pktcrypt completions SHELL`: the script on standard output.
pub(crate) fn completions(args: &CompletionsArgs) {
    let mut cmd = command();
    clap_complete::generate(args.shell, &mut cmd, "pktcrypt", &mut std::io::stdout());
}

/// `pktcrypt man [--dir DIR]`.
pub(crate) fn man(args: &ManArgs) -> Result<(), String> {
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("--dir {}: {e}", dir.display()))?;
            clap_mangen::generate_to(command(), dir)
                .map_err(|e| format!("--dir {}: {e}", dir.display()))
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command())
                .render(&mut out)
                .map_err(|e| e.to_string())?;
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| format!("standard output: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        // clap's own checks (conflicting names, bad defaults, groups).
        command().debug_assert();
    }

    #[test]
    fn every_command_has_a_man_page() {
        let dir = std::env::temp_dir().join(format!("pktcrypt-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        man(&ManArgs {
            dir: Some(dir.clone()),
        })
        .expect("man pages");
        for sub in command().get_subcommands() {
            let page = dir.join(format!("pktcrypt-{}.1", sub.get_name()));
            assert!(page.exists(), "{}", page.display());
        }
        assert!(dir.join("pktcrypt.1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
