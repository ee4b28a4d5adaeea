"""pktcrypt: packet encryption with two key generations.

An :class:`Endpoint` is a key server (many peers) or a client (one server). It seals inner IP
packets into ESP packets (RFC 4303) for UDP (tunnel mode), or whole IP packets in ESP transport
mode (:meth:`Endpoint.seal_transport`, :meth:`Endpoint.open_transport`), opens received ones, and
runs the key distribution:
feed every received datagram to :meth:`Endpoint.open`, send what :meth:`Endpoint.transmits`
yields, and call :meth:`Endpoint.handle_timeout` when :meth:`Endpoint.poll_timeout` has passed.

Bulk operations (:meth:`Endpoint.seal_many`, :meth:`Endpoint.open_many`) release the GIL.

Group mode (one key for a whole group): a :class:`GroupController` distributes the group keys to
its members (:meth:`GroupController.add_member`), each a :class:`GroupMember` that seals for the
whole group under its own sender key and opens every other member's packets. They are driven
like an :class:`Endpoint`: :meth:`~GroupMember.open`, :meth:`~GroupMember.transmits`,
:meth:`~GroupMember.poll_timeout`, :meth:`~GroupMember.handle_timeout`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import TracebackType
from typing import Iterator, List, Literal, Optional, Sequence, Tuple, Type, Union

from . import _native
from ._native import (
    AuthenticationError,
    ConfigError,
    DroppedError,
    InitKeyError,
    MalformedError,
    PktcryptError,
    ReplayError,
    RoleError,
    SealError,
    UnknownSpiError,
)

__all__ = [
    "AuthenticationError",
    "Backend",
    "CONTROLLER",
    "ConfigError",
    "DroppedError",
    "ESP_UDP_PORT",
    "Endpoint",
    "GroupController",
    "GroupMember",
    "GroupPhase",
    "GroupStatus",
    "InitKeyError",
    "MalformedError",
    "Packet",
    "PktcryptError",
    "ReplayError",
    "Role",
    "RoleError",
    "SA",
    "SealError",
    "Status",
    "Suite",
    "UnknownSpiError",
    "keygen",
    "now",
]

Buffer = Union[bytes, bytearray, memoryview]

ESP_UDP_PORT = 4500
"""The ESP-in-UDP port of RFC 3948: :meth:`Endpoint.seal_transport`'s default ports."""


class Role(str, enum.Enum):
    """Which side of the key distribution an endpoint is."""

    SERVER = "server"
    """Key server: transmits with N-1, receives with N and N-1."""
    CLIENT = "client"
    """Client: transmits with N, receives with N and N-1."""
    GROUP_CONTROLLER = "group-controller"
    """Group controller (:class:`GroupController`): distributes the group keys, no data."""
    GROUP_MEMBER = "group-member"
    """Group member (:class:`GroupMember`): seals for the group, opens every member's packets."""


class Suite(str, enum.Enum):
    """AEAD suite of a generation."""

    AES_128_GCM = "aes-128-gcm"
    AES_256_GCM = "aes-256-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"


class Backend(str, enum.Enum):
    """AEAD implementation."""

    DEFAULT = "default"
    """The measured default: ``RING_AWS_LC``."""
    RING = "ring"
    RUSTCRYPTO = "rustcrypto"
    AWS_LC = "aws-lc"
    """aws-lc-rs (AWS-LC's assembly: AVX-512 VAES + VPCLMULQDQ AES-GCM)."""
    RING_AWS_LC = "ring+aws-lc"
    """ring, and aws-lc-rs for AES-GCM packets of 4 KiB (seal) or 6 KiB (open) and more."""


@dataclass(frozen=True)
class Packet:
    """A received datagram that was not dropped."""

    kind: Literal["data", "control"]
    peer: int
    generation: int
    data: bytes
    """The decrypted inner IP packet (empty for control messages, which the endpoint consumed).
    From :meth:`Endpoint.open_transport` in transport mode: the restored IP packet."""
    next_header: Optional[int] = None
    """From :meth:`Endpoint.open_transport` only (``None`` otherwise): the ESP trailer's next
    header of data, which names the mode: 4 or 41, tunnel mode (``data`` is the inner packet);
    anything else, transport mode (``data`` is the IP packet restored, and this its protocol:
    6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...). 0 for control messages."""


@dataclass(frozen=True)
class Status:
    """Generations held for a peer and their counters."""

    tx_generation: int
    """The generation this side transmits with."""
    newest_generation: int
    """Newest generation held (0: the init key only)."""
    previous_generation: Optional[int]
    newest_spi: Optional[int]
    newest_suite: Optional[Suite]
    packets_sealed: int
    """Under the transmit generation."""
    packets_opened: int
    auth_failures: int
    replays: int
    newest_exchanged: bool = False
    """Whether the newest generation came from a key exchange (forward secret)."""
    newest_installed: Optional[float] = None
    """When the newest generation was installed (seconds on :func:`now`'s clock)."""
    previous_suite: Optional[Suite] = None
    """The previous generation's suite (``None`` if none is held): after a suite change at a
    rekey it differs from ``newest_suite``, and both open."""


@dataclass(frozen=True)
class SA:
    """One direction of one generation, for an independent decryptor. Holds key material."""

    spi: int
    suite: Suite
    generation: int
    outbound: bool
    esn: bool
    key: bytes
    salt: bytes

    def __repr__(self) -> str:  # never print keys
        return (
            f"SA(spi={self.spi:#010x}, suite={self.suite.value}, generation={self.generation}, "
            f"outbound={self.outbound}, esn={self.esn}, key=<redacted>)"
        )


def _ns(seconds: Optional[float]) -> Optional[int]:
    return None if seconds is None else int(seconds * 1e9)


def _ms(seconds: Optional[float], field: str) -> int:
    if seconds is None:
        return 0
    if seconds < 0:
        raise ConfigError(f"{field}: must not be negative")
    return int(round(seconds * 1000))


def now() -> float:
    """The endpoints' default clock (CLOCK_BOOTTIME), in seconds."""
    return _native.now_ns() / 1e9


def keygen(suite: Suite = Suite.AES_256_GCM, spi: Optional[int] = None) -> str:
    """A new init key as a ``pkc1-`` text code (give it to both sides out of band)."""
    return _native.keygen(Suite(suite).value, spi)


def _suite_name(suite: Union[Suite, str]) -> str:
    """A suite's name; a string passes as it is, for the native layer to refuse by name."""
    return suite.value if isinstance(suite, Suite) else str(suite)


def _packet(t: Tuple[str, int, int, bytes]) -> Packet:
    kind, peer, generation, data = t
    if kind == "data":
        return Packet("data", peer, generation, data)
    return Packet("control", peer, generation, data)


class Endpoint:
    """A key server or a client.

    Times (``now``) are seconds on :func:`now`'s clock; leave them out to use it. ``triggers``
    overrides rekey triggers (defaults: half the AEAD limits of RFC 9001 §6.6, and one hour):
    ``packets_sealed``, ``packets_opened``, ``packets_total``, ``bytes``, ``auth_failures``,
    ``max_age`` (seconds). ``pfs`` (servers) says which rotations exchange fresh ephemeral keys
    (X25519 + ML-KEM-768): ``"every-rekey"`` (the default), ``"init-only"``, ``"off"``, or N for
    every Nth rotation. :meth:`status` reports per generation whether it came from an exchange
    (``newest_exchanged``) and when (``newest_installed_ns``).
    """

    def __init__(
        self,
        role: Role,
        init_key: Optional[str] = None,
        *,
        suite: Suite = Suite.AES_256_GCM,
        derived: bool = False,
        rekey_interval: Optional[float] = 3600.0,
        update_interval: Optional[float] = None,
        hello_interval: float = 10.0,
        request_timeout: float = 0.5,
        max_backoff: float = 4.0,
        max_retries: int = 5,
        reorder_grace: float = 0.25,
        replay_window: int = 1024,
        backend: Backend = Backend.DEFAULT,
        triggers: Optional[dict[str, float]] = None,
        pfs: Union[str, int] = "every-rekey",
        now: Optional[float] = None,
    ) -> None:
        self._role = Role(role)
        if self._role in (Role.GROUP_CONTROLLER, Role.GROUP_MEMBER):
            raise RoleError(f"{self._role.value}: use GroupController or GroupMember, not Endpoint")
        self._native = _native.Endpoint(
            self._role.value,
            init_key,
            suite_name=Suite(suite).value,
            derived=derived,
            rekey_interval_ms=_ms(rekey_interval, "rekey_interval"),
            update_interval_ms=_ms(update_interval, "update_interval"),
            hello_interval_ms=_ms(hello_interval, "hello_interval"),
            request_timeout_ms=_ms(request_timeout, "request_timeout"),
            max_backoff_ms=_ms(max_backoff, "max_backoff"),
            max_retries=max_retries,
            reorder_grace_ms=_ms(reorder_grace, "reorder_grace"),
            replay_window=replay_window,
            backend=Backend(backend).value,
            triggers=triggers,
            pfs=str(pfs),
            now_ns=_ns(now),
        )

    @property
    def role(self) -> Role:
        return self._role

    def add_peer(self, init_key: str, now: Optional[float] = None) -> int:
        """Adds a client (servers only); returns its peer id."""
        return self._native.add_peer(init_key, _ns(now))

    def seal(self, inner: Buffer, peer: int = 0, now: Optional[float] = None) -> bytes:
        """Seals an inner IPv4/IPv6 packet for ``peer`` (a client's peer is its server)."""
        return self._native.seal(peer, inner, _ns(now))

    def seal_into(self, inner: Buffer, out: Union[bytearray, memoryview], peer: int = 0) -> int:
        """Seals into a caller buffer; returns the ESP packet length."""
        sealed = self._native.seal(peer, inner, None)
        if len(sealed) > len(out):
            raise SealError(f"out needs {len(sealed)} bytes")
        out[: len(sealed)] = sealed
        return len(sealed)

    def seal_many(self, packets: Sequence[Buffer], peer: int = 0, now: Optional[float] = None) -> List[bytes]:
        """Seals many packets with the GIL released."""
        return self._native.seal_many(peer, list(packets), _ns(now))

    def open(self, datagram: Buffer, now: Optional[float] = None) -> Packet:
        """Opens a received datagram. Raises a :class:`DroppedError` subclass for a dropped one."""
        return _packet(self._native.open(datagram, _ns(now)))

    def open_many(
        self, datagrams: Sequence[Buffer], now: Optional[float] = None
    ) -> List[Union[Packet, DroppedError]]:
        """Opens many datagrams with the GIL released; drops are returned, not raised."""
        out: List[Union[Packet, DroppedError]] = []
        for r in self._native.open_many(list(datagrams), _ns(now)):
            out.append(r if isinstance(r, DroppedError) else _packet(r))
        return out

    def seal_transport(
        self,
        packet: Buffer,
        peer: int = 0,
        *,
        src_port: int = ESP_UDP_PORT,
        dst_port: int = ESP_UDP_PORT,
        now: Optional[float] = None,
    ) -> bytes:
        """Seals an IP packet for ``peer`` in ESP transport mode inside UDP (RFC 4303 §3.1.1,
        RFC 3948), host to host, and returns the packet to send as it is (a raw IP socket, a TUN
        device): the packet's own IP header (protocol 17, lengths and IPv4 checksum fixed), a UDP
        header from ``src_port`` to ``dst_port`` (4500 both, as RFC 3948 says, unless given),
        then ESP over the transport payload with next header = its protocol. The transport
        checksum is left as the sender computed it; the receiver recomputes it.

        Takes IPv4 (options kept) and IPv6 with at most hop-by-hop and destination options
        extension headers (ESP goes after them). Raises :class:`SealError` naming the reason for
        a fragment, an IPv6 routing, fragment, AH or ESP header, an IP-in-IP, ESP or AH payload
        (seal IP-in-IP with :meth:`seal`, in tunnel mode), or a malformed packet; nothing is sent
        then and no sequence number spent.
        """
        return self._native.seal_transport(peer, packet, src_port, dst_port, _ns(now))

    def open_transport(self, packet: Buffer, now: Optional[float] = None) -> Packet:
        """Opens a received IP packet carrying ESP in UDP (it starts at the IP header), in
        either mode: :attr:`Packet.next_header` says which. In transport mode the IP packet is
        restored: protocol, lengths and IPv4 checksum, and the TCP/UDP/ICMPv6 checksum
        recomputed over the addresses received (a NAT may have changed them: RFC 3948 §3.1.2;
        the ICV has authenticated the payload). Control messages are consumed as by
        :meth:`open`. Raises a :class:`DroppedError` subclass for a dropped packet (replayed,
        forged, truncated, malformed IP or UDP headers, a fragment, not UDP, a keepalive, an
        unknown SPI); drops are counted in :meth:`drops`.

        The IP header of a transport-mode packet is **not authenticated** (RFC 4303): an
        on-path attacker can deliver an authentic payload under other addresses (even another
        IP version) and the restored packet carries them with valid checksums. Check its
        addresses against what ``peer`` may use before writing it to a TUN device or a raw
        socket."""
        kind, peer, generation, data, next_header = self._native.open_transport(packet, _ns(now))
        if kind == "data":
            return Packet("data", peer, generation, data, next_header)
        return Packet("control", peer, generation, data, next_header)

    def poll_transmit(self) -> Optional[Tuple[int, bytes]]:
        """The next (peer, datagram) to send, or None."""
        return self._native.poll_transmit()

    def transmits(self) -> Iterator[Tuple[int, bytes]]:
        """Every datagram waiting to be sent."""
        while (t := self._native.poll_transmit()) is not None:
            yield t

    def poll_timeout(self) -> Optional[float]:
        """When :meth:`handle_timeout` must run next (seconds on :func:`now`'s clock)."""
        t = self._native.poll_timeout()
        return None if t is None else t / 1e9

    def handle_timeout(self, now: Optional[float] = None) -> None:
        """Runs the timers due (retransmissions, rekeys, hellos)."""
        self._native.handle_timeout(_ns(now))

    def rekey(self, peer: Optional[int] = None, now: Optional[float] = None) -> int:
        """Rekey on demand: a server rotates ``peer`` (every client with ``None``) at its next
        packet under its newest key; a client asks its server for a new generation now (the
        request appears in :meth:`transmits`). Returns how many rotations were asked for;
        raises :class:`SealError` for an unknown peer or one (or a client) without a generation
        yet."""
        return int(self._native.rekey(peer, _ns(now)))

    def status(self, peer: int = 0) -> Status:
        """Generations held and counters."""
        d = self._native.status(peer)

        def num(key: str) -> Optional[int]:
            v = d.get(key)
            return v if isinstance(v, int) else None

        suite = d.get("newest_suite")
        previous_suite = d.get("previous_suite")
        return Status(
            tx_generation=num("tx_generation") or 0,
            newest_generation=num("newest_generation") or 0,
            previous_generation=num("previous_generation"),
            newest_spi=num("newest_spi"),
            newest_suite=Suite(suite) if isinstance(suite, str) else None,
            packets_sealed=num("packets_sealed") or 0,
            packets_opened=num("packets_opened") or 0,
            auth_failures=num("auth_failures") or 0,
            replays=num("replays") or 0,
            newest_exchanged=d.get("newest_exchanged") is True,
            newest_installed=None if num("newest_installed_ns") is None else (num("newest_installed_ns") or 0) / 1e9,
            previous_suite=Suite(previous_suite) if isinstance(previous_suite, str) else None,
        )

    def drops(self) -> dict[str, int]:
        """Dropped packets by reason."""
        return self._native.drops()

    def export_sas(self, peer: int = 0) -> List[SA]:
        """Both directions of every generation held for ``peer``."""
        return [
            SA(
                spi=d["spi"],
                suite=Suite(d["suite"]),
                generation=d["generation"],
                outbound=d["outbound"],
                esn=d["esn"],
                key=d["key"],
                salt=d["salt"],
            )
            for d in self._native.export_sas(peer)
        ]

    def close(self) -> None:
        """Forgets every key (zeroized). Further calls raise :class:`PktcryptError`."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Endpoint(role={self._role.value}, closed={self.closed})"

    def set_suite(self, suite: Optional[Suite], peer: Optional[int] = None) -> None:
        """Cipher agility (key servers): the suite of future generations.

        With ``peer`` left out, the server-wide suite (this also ends a rotation set with
        :meth:`set_suite_rotation`); with a ``peer``, that client's own suite, over the
        server-wide suite or rotation (``suite=None`` takes it away). Nothing is rekeyed now:
        each client switches at its next rekey, and since every generation carries its suite
        (the receiver picks key and suite by SPI), packets under the old and the new generation
        both open across the switch. Raises :class:`RoleError` on a client, :class:`ConfigError`
        for a bad suite, :class:`PktcryptError` for an unknown peer.
        """
        self._native.set_suite(None if suite is None else _suite_name(suite), peer)

    def set_suite_rotation(self, suites: Sequence[Suite]) -> None:
        """Cipher agility (key servers): future generations rotate through ``suites``.

        A client's generation *g* (an init handshake starts again at 1) gets
        ``suites[(g - 1) % len(suites)]``: each rekey takes the next suite of the list, per
        client, from the generation number alone. Clients with a suite of their own
        (:meth:`set_suite` with a ``peer``) keep it. An empty list ends the rotation (the
        server-wide suite, which a rotation sets to its first, applies again).
        """
        self._native.set_suite_rotation([_suite_name(s) for s in suites])

    def suite_for(self, peer: int, generation: int) -> Suite:
        """The suite generation ``generation`` of ``peer`` gets when it is minted (key
        servers): the client's own suite, else the rotation's, else the server-wide one."""
        return Suite(self._native.suite_for(peer, generation))


# Group mode (spec §6).

CONTROLLER = -1
"""The peer of a :class:`GroupMember`'s control messages (:attr:`Packet.peer`): its controller."""


class GroupPhase(str, enum.Enum):
    """A group member's state, and the phases of a rollout (spec §6)."""

    UPDATE_COMPLETED = "update-completed"
    """Holds only the newest key and transmits with it (a rollout completed)."""
    DISTRIBUTION_COMPLETED = "distribution-completed"
    """Holds old and new, transmits with old (the new key was distributed)."""
    IN_TRANSIT = "in-transit"
    """Holds old and new, transmits with new."""


@dataclass(frozen=True)
class GroupStatus:
    """The state of a group controller or member."""

    generation: int
    """The newest group generation (a controller: the newest it made; a member: the newest it
    holds; 0: none yet)."""
    phase: GroupPhase
    """A member: its state. A controller: the phase its rollout in progress waits for every
    member to reach (:attr:`GroupPhase.UPDATE_COMPLETED` when idle)."""
    rollout_in_progress: bool
    member_count: int
    """A controller: members provisioned; a member: the group's layout it was made with."""
    tx_generation: int = 0
    """A member: the generation it transmits with (0: none yet, it cannot seal)."""
    previous_generation: Optional[int] = None
    """A member: the previous generation it still holds."""
    index: Optional[int] = None
    """A member: its index."""
    active_members: Tuple[int, ...] = ()
    """A controller: the members that joined (and did not leave or get evicted)."""
    can_seal: bool = False
    """A member: :meth:`GroupMember.seal` has a key now. A generation it was given
    receive-only (it joined, or its control channel restarted, after the generation was made)
    is its ``tx_generation`` but not for sealing: it seals again from the next rollout's
    transition."""


def _group_settings(
    suite: Suite,
    rekey_interval: Optional[float],
    retry: float,
    max_backoff: float,
    max_retries: int,
    evict_unresponsive: bool,
    phase_grace: float,
    unknown_sender_holdoff: float,
    pfs: Union[str, int],
    channel_rekey_interval: Optional[float],
    replay_window: int,
    backend: Backend,
) -> _native._GroupSettings:
    return {
        "suite_name": Suite(suite).value,
        "rekey_interval_ms": _ms(rekey_interval, "rekey_interval"),
        "retry_ms": _ms(retry, "retry"),
        "max_backoff_ms": _ms(max_backoff, "max_backoff"),
        "max_retries": max_retries,
        "evict_unresponsive": evict_unresponsive,
        "phase_grace_ms": _ms(phase_grace, "phase_grace"),
        "unknown_sender_holdoff_ms": _ms(unknown_sender_holdoff, "unknown_sender_holdoff"),
        "pfs": str(pfs),
        "channel_rekey_interval_ms": _ms(channel_rekey_interval, "channel_rekey_interval"),
        "replay_window": replay_window,
        "backend": Backend(backend).value,
    }


def _group_packet(t: Tuple[str, int, int, bytes]) -> Packet:
    kind, peer, generation, data = t
    if kind == "data":
        return Packet("data", peer, generation, data)
    return Packet("control", peer, generation, data)


class _Group:
    """What a group controller and a group member share."""

    _native: _native.Group
    _role: Role

    @property
    def role(self) -> Role:
        return self._role

    def poll_timeout(self) -> Optional[float]:
        """When :meth:`handle_timeout` must run next (seconds on :func:`now`'s clock)."""
        t = self._native.poll_timeout()
        return None if t is None else t / 1e9

    def handle_timeout(self, now: Optional[float] = None) -> None:
        """Runs the timers due (retransmissions, rollouts)."""
        self._native.handle_timeout(_ns(now))

    def group_status(self) -> GroupStatus:
        """The group's generation and phase."""
        d = self._native.group_status()
        previous = d.get("previous_generation")
        index = d.get("index")
        active = d.get("active_members")
        return GroupStatus(
            generation=int(d["generation"]),  # type: ignore[arg-type]
            phase=GroupPhase(d["phase"]),
            rollout_in_progress=d["rollout_in_progress"] is True,
            member_count=int(d["member_count"]),  # type: ignore[arg-type]
            tx_generation=int(d.get("tx_generation", 0)),  # type: ignore[arg-type]
            previous_generation=previous if isinstance(previous, int) else None,
            index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            active_members=tuple(active) if isinstance(active, list) else (),
            can_seal=d.get("can_seal") is True,
        )

    def status(self, member: int) -> Status:
        """The keys held for member ``member`` and their counters (a member: that member's
        sender keys, its own or another's; a controller: that member's control channel).
        Raises :class:`PktcryptError` for an index not in the group."""
        d = self._native.status(member)

        def num(key: str) -> Optional[int]:
            v = d.get(key)
            return v if isinstance(v, int) else None

        suite = d.get("newest_suite")
        installed = num("newest_installed_ns")
        return Status(
            tx_generation=num("tx_generation") or 0,
            newest_generation=num("newest_generation") or 0,
            previous_generation=num("previous_generation"),
            newest_spi=num("newest_spi"),
            newest_suite=Suite(suite) if isinstance(suite, str) else None,
            packets_sealed=num("packets_sealed") or 0,
            packets_opened=num("packets_opened") or 0,
            auth_failures=num("auth_failures") or 0,
            replays=num("replays") or 0,
            newest_exchanged=d.get("newest_exchanged") is True,
            newest_installed=None if installed is None else installed / 1e9,
        )

    def export_sas(self, member: int) -> List[SA]:
        """Both directions of every generation held for ``member`` (see :meth:`status`)."""
        return [
            SA(
                spi=d["spi"],
                suite=Suite(d["suite"]),
                generation=d["generation"],
                outbound=d["outbound"],
                esn=d["esn"],
                key=d["key"],
                salt=d["salt"],
            )
            for d in self._native.export_sas(member)
        ]

    def drops(self) -> dict[str, int]:
        """Dropped packets by reason."""
        return self._native.drops()

    def close(self) -> None:
        """Forgets every key (zeroized). Further calls raise :class:`PktcryptError`."""
        self._native.close()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(closed={self.closed})"


class GroupController(_Group):
    """A group key controller: distributes a new group key to every member in three phases
    (distribution, first and second transition request: spec §6) every ``rekey_interval``
    seconds (``None``: only on events: a join, a leave, an eviction, :meth:`rekey`), retrying
    lost messages (from ``retry`` seconds, backing off to ``max_backoff``) and, after
    ``max_retries``, evicting a member that never answers (``evict_unresponsive``). It seals and
    opens no data.

    ``group_key`` is the group init key (a ``pkc1-`` code, given to every member too): its SPI
    is the base of the members' SPIs. Each member has a control channel of its own with the
    controller, keyed by its own init key (:meth:`add_member`); ``pfs`` says which of the
    channel's rotations exchange fresh ephemeral keys (as for :class:`Endpoint`) and
    ``channel_rekey_interval`` how often they rotate. Drive it like an :class:`Endpoint`: every
    datagram from a member into :meth:`open`, every ``(member, datagram)`` of :meth:`transmits`
    to that member, :meth:`handle_timeout` when :meth:`poll_timeout` has passed.

    ``derived=True`` is derived mode for the group key (seed 003 applied to groups): a rollout
    carries a nonce, never a group key, and every member computes the new generation from it
    and the group init key. Members need no setting for it, but all must hold the same group
    init key.
    """

    def __init__(
        self,
        group_key: str,
        *,
        derived: bool = False,
        suite: Suite = Suite.AES_256_GCM,
        rekey_interval: Optional[float] = 3600.0,
        retry: float = 0.5,
        max_backoff: float = 4.0,
        max_retries: int = 6,
        evict_unresponsive: bool = True,
        phase_grace: float = 0.1,
        unknown_sender_holdoff: float = 10.0,
        pfs: Union[str, int] = "every-rekey",
        channel_rekey_interval: Optional[float] = 3600.0,
        replay_window: int = 1024,
        backend: Backend = Backend.DEFAULT,
    ) -> None:
        self._role = Role.GROUP_CONTROLLER
        self._native = _native.Group.controller(
            group_key,
            derived=derived,
            **_group_settings(
                suite,
                rekey_interval,
                retry,
                max_backoff,
                max_retries,
                evict_unresponsive,
                phase_grace,
                unknown_sender_holdoff,
                pfs,
                channel_rekey_interval,
                replay_window,
                backend,
            ),
        )

    def add_member(self, index: int, member_key: str, now: Optional[float] = None) -> None:
        """Provisions member ``index`` with its own init key (the one that member is made with).
        Members are added in order, 0, 1, 2, ...: :class:`ConfigError` for another index,
        :class:`InitKeyError` for a bad key or one the controller holds already. The member
        becomes active when it joins."""
        self._native.add_member(index, member_key, _ns(now))

    def open(self, datagram: Buffer, now: Optional[float] = None) -> Packet:
        """Opens a datagram from a member: a control message (``peer`` its index), consumed.
        Raises a :class:`DroppedError` subclass for a dropped one (anything else)."""
        return _group_packet(self._native.open(datagram, _ns(now)))

    def poll_transmit(self) -> Optional[Tuple[int, bytes]]:
        """The next (member index, datagram) to send, or None."""
        return self._native.poll_transmit()

    def transmits(self) -> Iterator[Tuple[int, bytes]]:
        """Every datagram waiting to be sent, with the index of the member it goes to."""
        while (t := self._native.poll_transmit()) is not None:
            yield t

    def rekey(self, now: Optional[float] = None) -> None:
        """Starts a rollout of a new group key now (after the one in progress)."""
        self._native.rekey(_ns(now))

    def __enter__(self) -> GroupController:
        return self


class GroupMember(_Group):
    """Member ``index`` of a group of ``member_count`` members (member ``j`` transmits under the
    group key's SPI base + ``j``: every member and the controller agree on the layout), with its
    own init key ``member_key`` (its control channel with the controller) and the group init key
    ``group_key``. It joins at once (see :meth:`transmits`: everything goes to the controller)
    and can seal once a rollout made after its join has reached its transition
    (:meth:`group_status`: ``can_seal``; before, and for a while after its control channel
    restarts, :meth:`seal` raises :class:`SealError`). It seals for the
    whole group under its own sender key and opens every other member's packets; receivers
    pick the key by SPI, so a rollout never costs a packet. The settings are the controller's
    (a member uses ``retry`` and ``max_backoff`` for its requests, ``replay_window`` and
    ``backend`` for its data).
    """

    def __init__(
        self,
        index: int,
        member_count: int,
        member_key: str,
        group_key: str,
        *,
        suite: Suite = Suite.AES_256_GCM,
        rekey_interval: Optional[float] = 3600.0,
        retry: float = 0.5,
        max_backoff: float = 4.0,
        max_retries: int = 6,
        evict_unresponsive: bool = True,
        phase_grace: float = 0.1,
        unknown_sender_holdoff: float = 10.0,
        pfs: Union[str, int] = "every-rekey",
        channel_rekey_interval: Optional[float] = 3600.0,
        replay_window: int = 1024,
        backend: Backend = Backend.DEFAULT,
        now: Optional[float] = None,
    ) -> None:
        self._role = Role.GROUP_MEMBER
        self._native = _native.Group.member(
            index,
            member_count,
            member_key,
            group_key,
            **_group_settings(
                suite,
                rekey_interval,
                retry,
                max_backoff,
                max_retries,
                evict_unresponsive,
                phase_grace,
                unknown_sender_holdoff,
                pfs,
                channel_rekey_interval,
                replay_window,
                backend,
            ),
            now_ns=_ns(now),
        )

    def seal(self, inner: Buffer, now: Optional[float] = None) -> bytes:
        """Seals an inner IPv4/IPv6 packet for the whole group (send it to every other member)."""
        return self._native.seal(inner, _ns(now))

    def seal_many(self, packets: Sequence[Buffer], now: Optional[float] = None) -> List[bytes]:
        """Seals many packets with the GIL released."""
        return self._native.seal_many(list(packets), _ns(now))

    def open(self, datagram: Buffer, now: Optional[float] = None) -> Packet:
        """Opens a received datagram: data from another member (``peer`` its index) or a
        control message from the controller (``peer`` :data:`CONTROLLER`), consumed. Raises a
        :class:`DroppedError` subclass for a dropped one."""
        return _group_packet(self._native.open(datagram, _ns(now)))

    def open_many(
        self, datagrams: Sequence[Buffer], now: Optional[float] = None
    ) -> List[Union[Packet, DroppedError]]:
        """Opens many datagrams with the GIL released; drops are returned, not raised."""
        out: List[Union[Packet, DroppedError]] = []
        for r in self._native.open_many(list(datagrams), _ns(now)):
            out.append(r if isinstance(r, DroppedError) else _group_packet(r))
        return out

    def poll_transmit(self) -> Optional[bytes]:
        """The next datagram to send to the controller, or None."""
        t = self._native.poll_transmit()
        return None if t is None else t[1]

    def transmits(self) -> Iterator[bytes]:
        """Every datagram waiting to be sent (all to the controller)."""
        while (t := self._native.poll_transmit()) is not None:
            yield t[1]

    def __enter__(self) -> GroupMember:
        return self
