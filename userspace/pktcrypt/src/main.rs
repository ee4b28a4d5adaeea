//! `pktcrypt`: the command-line tool ([`cli`] defines every command, its options and help).
//!
//! - `pktcrypt demo`: the packet engine between a key server and a client over real UDP sockets
//!   on loopback through key rotations, printing what happens.
//! - `pktcrypt keygen`: init keys as text codes (and QR codes).
//! - `pktcrypt server|client|group-controller|group-member --config FILE`: the control-plane
//!   roles over plain UDP (no XDP needed).
//! - `pktcrypt up|down --config FILE`: a gateway ([`up`]); `pktcrypt check --config FILE`
//!   validates any of these files ([`check`]).
//! - `pktcrypt show|status|export-keys`: ask a running gateway ([`show`], [`status`]).
//! - `pktcrypt completions SHELL`, `pktcrypt man`: generated from [`cli`].

// A command-line tool prints its results on stdout by design.
#![allow(clippy::print_stdout)]

use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::{
    DropReason, Engine, EngineConfig, Generation, GenerationInfo, Opened, PeerId, Role, Secret,
    Slot, Spi, Suite, Time,
};
mod capture;
mod check;
mod cli;
mod config;
mod drive;
mod driver;
mod endpoints;
mod events;

/// mimalloc: the key server allocates and frees per-client key state at a high rate over a
/// heap of millions of clients, where it keeps freed memory local and avoids the system
/// allocator's bin walks (`benches/benches/keyserver.rs` measures both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod keycode;
mod metrics;
mod notify;
mod reload;
mod show;
mod status;
mod up;
mod wireshark;

use clap::Parser as _;
use cli::{Command, DemoArgs, KeygenArgs, XdpAttachArgs};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Logs to standard error, filtered by `PKTCRYPT_LOG` (else `RUST_LOG`, else `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PKTCRYPT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    // --help, --version and usage errors exit here (0 or 2), before anything else.
    let cli = cli::Cli::parse();
    init_logging();
    let holds_keys = matches!(
        cli.command,
        Command::Up(_)
            | Command::Server(_)
            | Command::Client(_)
            | Command::GroupController(_)
            | Command::GroupMember(_)
            | Command::Keygen(_)
            | Command::Check(_)
    );
    if holds_keys && let Err(e) = driver::harden_process() {
        eprintln!("pktcrypt: {e}");
        return ExitCode::FAILURE;
    }
    let (name, result) = run(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktcrypt {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command: (its name for error messages, the outcome).
fn run(command: Command) -> (&'static str, Result<(), String>) {
    match command {
        Command::Demo(a) => ("demo", demo_args(&a).and_then(|a| demo(&a))),
        Command::Keygen(a) => ("keygen", keygen(&a)),
        Command::Server(a) => ("server", run_role("server", &a.config)),
        Command::Client(a) => ("client", run_role("client", &a.config)),
        Command::GroupController(a) => {
            ("group-controller", run_role("group-controller", &a.config))
        }
        Command::GroupMember(a) => ("group-member", run_role("group-member", &a.config)),
        Command::Up(a) => (
            "up",
            driver::termination_flag().and_then(|t| up::run(&a.config, &t)),
        ),
        Command::Down(a) => ("down", up::down(&a.config)),
        Command::Check(a) => ("check", check::run(&a).map(|summary| println!("{summary}"))),
        Command::Show(a) => ("show", show::run(&a)),
        Command::Status(a) => (
            "status",
            up::query("status", a.config.as_deref(), a.socket.as_deref())
                .map(|text| println!("{}", text.trim_end())),
        ),
        Command::ExportKeys(a) => (
            "export-keys",
            wireshark::Format::from_name(&a.format).and_then(|f| {
                up::query(
                    &format!("export-keys {}", f.name()),
                    a.target.config.as_deref(),
                    a.target.socket.as_deref(),
                )
                .map(|text| println!("{text}"))
            }),
        ),
        Command::Reload(a) => (
            "reload",
            up::query("reload", a.config.as_deref(), a.socket.as_deref()).and_then(
                |text| match text.trim_end().strip_prefix("error: ") {
                    Some(e) => Err(e.to_string()),
                    None => {
                        println!("{}", text.trim_end());
                        Ok(())
                    }
                },
            ),
        ),
        Command::Rekey(a) => (
            "rekey",
            up::query(
                a.peer
                    .as_deref()
                    .map_or_else(|| "rekey".to_owned(), |p| format!("rekey {p}"))
                    .as_str(),
                a.target.config.as_deref(),
                a.target.socket.as_deref(),
            )
            .and_then(|text| match text.trim_end().strip_prefix("error: ") {
                Some(e) => Err(e.to_string()),
                None => {
                    println!("{}", text.trim_end());
                    Ok(())
                }
            }),
        ),
        Command::Capture(a) => (
            "capture",
            driver::termination_flag()
                .and_then(|stop| capture::run(&a.to_args(), &stop))
                .map(|summary| eprintln!("{summary}")),
        ),
        Command::XdpAttach(a) => ("xdp-attach", xdp_attach(&a)),
        Command::Completions(a) => {
            cli::completions(&a);
            ("completions", Ok(()))
        }
        Command::Man(a) => ("man", cli::man(&a)),
    }
}

/// The demo's numbers, with the messages of their errors.
struct Demo {
    rounds: u64,
    packets: u64,
}

fn demo_args(args: &DemoArgs) -> Result<Demo, String> {
    let number = |flag: &str, value: &str| -> Result<u64, String> {
        value
            .parse()
            .map_err(|_| format!("{flag}: expected a whole number, got {value:?}"))
    };
    Ok(Demo {
        rounds: number("--rounds", &args.rounds)?,
        packets: number("--packets", &args.packets)?.max(1),
    })
}

fn random_secret() -> Result<Secret, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("random number generator: {e}"))?;
    Ok(Secret::from_bytes(bytes))
}

fn random_spi() -> Result<Spi, String> {
    loop {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| format!("random number generator: {e}"))?;
        if let Ok(spi) = Spi::new(u32::from_be_bytes(b)) {
            return Ok(spi);
        }
    }
}

/// Packets opened per generation: `(generation, count)`.
type PerGeneration = Vec<(u64, u64)>;

/// One side: an engine with one peer and a UDP socket.
struct Side {
    name: &'static str,
    engine: Engine,
    peer: PeerId,
    socket: UdpSocket,
}

impl Side {
    fn send(&mut self, to: &UdpSocket, inner: &[u8], buf: &mut [u8]) -> Result<u64, String> {
        buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(inner);
        let n = self
            .engine
            .seal(self.peer, buf, inner.len(), NextHeader::Ipv4)
            .map_err(|e| format!("{}: seal: {e}", self.name))?;
        let dst = to.local_addr().map_err(|e| e.to_string())?;
        self.socket
            .send_to(&buf[..n], dst)
            .map_err(|e| format!("{}: send: {e}", self.name))?;
        Ok(self.engine.tx_generation(self.peer).map_or(0, |g| g.number))
    }

    /// Receives and opens everything waiting; returns (packets opened per generation, drops).
    fn drain(&mut self, buf: &mut [u8]) -> Result<(PerGeneration, Vec<DropReason>), String> {
        let mut opened: PerGeneration = Vec::new();
        let mut drops = Vec::new();
        loop {
            let n = match self.socket.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => return Err(format!("{}: recv: {e}", self.name)),
            };
            match self.engine.open(&mut buf[..n]) {
                Opened::Data { info, .. } | Opened::Control { info, .. } => {
                    match opened.iter_mut().find(|(g, _)| *g == info.generation) {
                        Some((_, c)) => *c += 1,
                        None => opened.push((info.generation, 1)),
                    }
                }
                Opened::Drop(reason) => drops.push(reason),
            }
        }
        Ok((opened, drops))
    }

    fn status_line(&self) -> String {
        let Some(st) = self.engine.peer_status(self.peer) else {
            return String::new();
        };
        let slots: Vec<String> = st
            .sas
            .iter()
            .map(|s| {
                let slot = match s.slot {
                    Slot::Init => "init",
                    Slot::Newest => "N",
                    Slot::Previous => "N-1",
                };
                format!(
                    "{slot}=gen{}[{} {}{}] sealed={} opened={}",
                    s.info.number,
                    s.info.spi,
                    s.info.suite,
                    if s.transmitting { " TX" } else { "" },
                    s.counters.packets_sealed,
                    s.counters.packets_opened
                )
            })
            .collect();
        format!("{:>6}: {}", self.name, slots.join("  "))
    }
}

fn ipv4_packet(i: u64) -> Vec<u8> {
    let mut p = vec![0u8; 84];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&84u16.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[20..28].copy_from_slice(&i.to_be_bytes());
    p
}

fn demo(args: &Demo) -> Result<(), String> {
    let start = Instant::now();
    let now = || -> Time { start.elapsed() };
    let suites = [Suite::Aes256Gcm, Suite::ChaCha20Poly1305, Suite::Aes128Gcm];
    let bind = || -> Result<UdpSocket, String> {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        Ok(s)
    };
    let init = Generation {
        info: GenerationInfo {
            number: 0,
            spi: random_spi()?,
            suite: Suite::Aes256Gcm,
        },
        secret: random_secret()?,
    };
    let mk = |name, role| -> Result<Side, String> {
        let mut engine = Engine::new(EngineConfig::new(role)).map_err(|e| e.to_string())?;
        let peer = engine.add_peer(&init, now()).map_err(|e| e.to_string())?;
        Ok(Side {
            name,
            engine,
            peer,
            socket: bind()?,
        })
    };
    let mut server = mk("server", Role::KeyServer)?;
    let mut client = mk("client", Role::Client)?;
    println!(
        "pktcrypt demo: key server on {}, client on {}, ESP-in-UDP over loopback",
        server.socket.local_addr().map_err(|e| e.to_string())?,
        client.socket.local_addr().map_err(|e| e.to_string())?
    );
    println!(
        "backend {:?}; init key {} ({}), secret never printed\n",
        server.engine.config().backend,
        init.info.spi,
        init.info.suite
    );
    let mut buf = vec![0u8; 2048];
    let mut rx = vec![0u8; 2048];
    let mut sent_total = 0u64;
    let mut received_total = 0u64;
    for round in 1..=args.rounds {
        let generation = Generation {
            info: GenerationInfo {
                number: round,
                spi: random_spi()?,
                suite: suites[(round as usize - 1) % suites.len()],
            },
            secret: random_secret()?,
        };
        // The server mints N+1 first. In round 2 the distribution is "lost": the client does not
        // get it until round 3's resend, and traffic must flow anyway.
        server
            .engine
            .install(server.peer, &generation, now())
            .map_err(|e| format!("server install: {e}"))?;
        let lost = round == 2;
        println!(
            "round {round}: server minted generation {} ({}, {}){}",
            round,
            generation.info.spi,
            generation.info.suite,
            if lost {
                "; its distribution to the client is LOST"
            } else {
                ""
            }
        );
        if !lost {
            client
                .engine
                .install(client.peer, &generation, now())
                .map_err(|e| format!("client install: {e}"))?;
        }
        let mut s_gen = 0;
        let mut c_gen = 0;
        let (mut at_client, mut drops_c, mut at_server, mut drops_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..args.packets {
            s_gen = server.send(&client.socket, &ipv4_packet(i), &mut buf)?;
            c_gen = client.send(&server.socket, &ipv4_packet(i), &mut buf)?;
            sent_total += 2;
            // Drain often so the loopback socket buffers never overflow.
            if i % 32 == 31 || i + 1 == args.packets {
                let (o, d) = client.drain(&mut rx)?;
                merge(&mut at_client, o);
                drops_c.extend(d);
                let (o, d) = server.drain(&mut rx)?;
                merge(&mut at_server, o);
                drops_s.extend(d);
            }
        }
        received_total += at_client
            .iter()
            .chain(&at_server)
            .map(|(_, c)| c)
            .sum::<u64>();
        println!(
            "         server -> client under gen {s_gen}: client opened {at_client:?} (gen, packets), drops {drops_c:?}"
        );
        println!(
            "         client -> server under gen {c_gen}: server opened {at_server:?} (gen, packets), drops {drops_s:?}"
        );
        println!("         {}", server.status_line());
        println!("         {}", client.status_line());
        if lost {
            // The client asks again and the server re-sends the same generation (spec S3).
            println!("         client gets the re-sent generation {round} and switches to it");
            client
                .engine
                .install(client.peer, &generation, now())
                .map_err(|e| format!("client install (resend): {e}"))?;
        }
    }

    println!("\nbad input is dropped and counted, never delivered:");
    let mut seal_probe = |client: &mut Side| -> Result<Vec<u8>, String> {
        buf[ESP_HEADER_LEN..ESP_HEADER_LEN + 84].copy_from_slice(&ipv4_packet(7));
        let n = client
            .engine
            .seal(client.peer, &mut buf, 84, NextHeader::Ipv4)
            .map_err(|e| e.to_string())?;
        Ok(buf[..n].to_vec())
    };
    let good = seal_probe(&mut client)?;
    // A forgery needs a fresh sequence number, or the replay check drops it first.
    let mut forged = seal_probe(&mut client)?;
    let last = forged.len() - 5;
    forged[last] ^= 0x40;
    let mut unknown = good.clone();
    unknown[0..4].copy_from_slice(&0x00ab_cdefu32.to_be_bytes());
    let dst = server.socket.local_addr().map_err(|e| e.to_string())?;
    for (what, pkt) in [
        ("genuine", &good[..]),
        ("replayed", &good[..]),
        ("forged (one bit)", &forged[..]),
        ("unknown SPI", &unknown[..]),
        ("truncated", &good[..20]),
    ] {
        client.socket.send_to(pkt, dst).map_err(|e| e.to_string())?;
        let (opened, drops) = server.drain(&mut rx)?;
        println!("  {what:>17}: opened {opened:?} dropped {drops:?}");
    }
    let drops = server.engine.drops();
    let counted: Vec<String> = drops
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!("  server drop counters: {}", counted.join(" "));
    println!(
        "\n{} data packets sent, {} opened; {} lost to key changes",
        sent_total,
        received_total,
        sent_total.saturating_sub(received_total)
    );
    if received_total != sent_total {
        return Err(format!(
            "hitless rekey violated: {} packets lost",
            sent_total - received_total
        ));
    }
    Ok(())
}

/// Adds per-generation counts from `more` into `into`.
fn merge(into: &mut PerGeneration, more: PerGeneration) {
    for (g, c) in more {
        match into.iter_mut().find(|(h, _)| *h == g) {
            Some((_, n)) => *n += c,
            None => into.push((g, c)),
        }
    }
}

fn run_role(role: &str, path: &Path) -> Result<(), String> {
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let term = driver::termination_flag()?;
    match role {
        "server" => driver::run_server(&config::load(path)?, &base, &term),
        "client" => driver::run_client(&config::load(path)?, &base, &term),
        "group-controller" => driver::run_group_controller(&config::load(path)?, &base, &term),
        _ => driver::run_group_member(&config::load(path)?, &base, &term),
    }
}

fn keygen(args: &KeygenArgs) -> Result<(), String> {
    let count = args.count;
    let suite: Suite = args.suite.parse().map_err(|e| format!("--suite: {e}"))?;
    let spi_base = match &args.spi {
        Some(v) => {
            let n = match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16),
                None => v.parse(),
            }
            .map_err(|_| format!("--spi: {v:?} is not a number"))?;
            Spi::new(n).map_err(|e| format!("--spi: {e}"))?;
            Some(n)
        }
        None => None,
    };
    let (qr, out, force) = (args.qr, args.out.clone(), args.force);
    let mut lines = zeroize::Zeroizing::new(String::new());
    for i in 0..count {
        let spi = match spi_base {
            Some(b) => Spi::new(b.checked_add(i as u32).ok_or("--spi: range overflows")?)
                .map_err(|e| e.to_string())?,
            None => random_spi()?,
        };
        let key = Generation {
            info: GenerationInfo {
                number: 0,
                spi,
                suite,
            },
            secret: random_secret()?,
        };
        let code = keycode::encode(&key);
        lines.push_str(&code);
        lines.push('\n');
        if out.is_none() {
            println!("{}", code.as_str());
        }
        if qr {
            eprintln!("{}", keycode::qr(&code)?);
        }
    }
    if let Some(path) = out {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::fs::PermissionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if force {
            options.create(true).truncate(true);
        } else {
            // Never overwrite keys by accident.
            options.create_new(true);
        }
        let mut f = options.open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "--out {}: exists (its keys would be lost; --force replaces it)",
                    path.display()
                )
            } else {
                format!("--out {}: {e}", path.display())
            }
        })?;
        // An existing file keeps its mode when truncated: set it before writing anything.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("--out {}: {e}", path.display()))?;
        f.write_all(lines.as_bytes())
            .map_err(|e| format!("--out {}: {e}", path.display()))?;
        eprintln!(
            "{count} init key(s) written to {} (mode 0600)",
            path.display()
        );
    }
    Ok(())
}

fn xdp_attach(args: &XdpAttachArgs) -> Result<(), String> {
    let object = args
        .object
        .clone()
        .or_else(|| std::env::var_os("PKTCRYPT_XDP_OBJECT").map(PathBuf::from));
    let mut cfg = pktcrypt_io::SteeringConfig {
        esp_port: args.esp_port,
        ..pktcrypt_io::SteeringConfig::default()
    };
    for value in &args.prefix {
        let (addr, len) = value
            .split_once('/')
            .ok_or_else(|| format!("--prefix: {value:?} is not ADDR/LEN"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("--prefix: bad address in {value:?}"))?;
        let len = len
            .parse()
            .map_err(|_| format!("--prefix: bad length in {value:?}"))?;
        cfg.prefixes.push((addr, len));
    }
    let seconds = args.seconds;
    let iface = args.iface.as_str();
    // Without --object (or PKTCRYPT_XDP_OBJECT): the object embedded in the binary.
    let bytes = pktcrypt_io::xdp_object(object.as_deref()).map_err(|e| format!("--object: {e}"))?;
    let term = driver::termination_flag()?;
    let mut steering = pktcrypt_io::XdpSteering::attach(&bytes, iface, &cfg)?;
    if steering.mode() == pktcrypt_io::AttachMode::Generic {
        eprintln!(
            "pktcrypt xdp-attach: warning: {iface} has no native XDP; attached in generic (SKB) mode"
        );
    }
    let start = std::time::Instant::now();
    let line = |s: &pktcrypt_io::XdpSteering, last: bool| -> Result<String, String> {
        let c = s.counters()?;
        Ok(format!(
            "{{\"iface\":\"{}\",\"mode\":\"{:?}\",\"final\":{last},\"steered\":{},\"passed\":{},\"malformed\":{},\"no_socket\":{}}}",
            s.iface(),
            s.mode(),
            c.steered,
            c.passed,
            c.malformed,
            c.no_socket
        ))
    };
    println!("{}", line(&steering, false)?);
    while !term.load(std::sync::atomic::Ordering::Relaxed)
        && seconds.is_none_or(|s| start.elapsed().as_secs() < s)
    {
        std::thread::sleep(Duration::from_millis(250));
        if start.elapsed().as_millis() % 1000 < 250 {
            println!("{}", line(&steering, false)?);
        }
    }
    let last = line(&steering, true)?;
    steering.detach();
    println!("{last}");
    Ok(())
}
