/* Every rekey trigger of pktcrypt_config, on the client and on the key server, fires at its
 * threshold, counted packet by packet: the handshake's own messages count too and the status
 * cannot tell them apart from the init key's, so each trigger is run at a threshold K and at
 * K + 3 and must rotate the pair exactly three packets (forgeries, kilobytes) later, never
 * earlier. The client's age trigger fires at the age, not a millisecond before. Rekey on
 * demand (pktcrypt_rekey) from either side. Also the 8192-packet replay window's edges.
 * (tests/tests/triggers.rs checks the same in Rust against the counters of the newest
 * generation.) */
#include "common.h"

#define MAX_DGRAM 2048

static uint64_t now_ns = 1000000000ull;

static void pump(pktcrypt_endpoint *a, pktcrypt_endpoint *b) { pump_pair(a, b, now_ns); }

typedef struct {
  pktcrypt_endpoint *server, *client;
  uint32_t peer;
} pair;

static pair make_pair(const pktcrypt_config *scfg, const pktcrypt_config *ccfg) {
  char key[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES256_GCM, 0x6000, key, sizeof key));
  pair p;
  CHECK_OK(pktcrypt_endpoint_new(scfg, NULL, now_ns, &p.server));
  CHECK_OK(pktcrypt_endpoint_add_peer(p.server, key, now_ns, &p.peer));
  CHECK_OK(pktcrypt_endpoint_new(ccfg, key, now_ns, &p.client));
  pump(p.client, p.server);
  return p;
}

static void free_pair(pair *p) {
  pktcrypt_endpoint_free(p->client);
  pktcrypt_endpoint_free(p->server);
}

static uint64_t newest(pair *p) {
  pktcrypt_peer_status st;
  CHECK_OK(pktcrypt_status(p->client, 0, &st));
  return st.newest_generation;
}

static pktcrypt_peer_status status(pktcrypt_endpoint *ep, uint32_t peer) {
  pktcrypt_peer_status st;
  CHECK_OK(pktcrypt_status(ep, peer, &st));
  return st;
}

/* Seals `len` bytes on `from`, opens on `to`; `forge` flips a bit of the tag first. */
static void send(pktcrypt_endpoint *from, pktcrypt_endpoint *to, uint32_t peer, size_t len,
                 int forge) {
  uint8_t inner[1500], out[MAX_DGRAM];
  size_t n;
  make_ipv4(inner, len, 7);
  CHECK_OK(pktcrypt_seal(from, peer, inner, len, out, sizeof out, &n, now_ns));
  if (forge) out[n - 1] ^= 1;
  pktcrypt_packet_info info;
  CHECK_OK(pktcrypt_open(to, now_ns, out, n, &info));
  CHECK(info.kind == (forge ? PKTCRYPT_PACKET_KIND_DROPPED : PKTCRYPT_PACKET_KIND_DATA));
}

enum trigger { SEALED, OPENED, TOTAL, BYTES, AUTH, N_TRIGGERS };
static const char *NAMES[] = {"packets_sealed", "packets_opened", "packets_total", "bytes",
                              "auth_failures"};
#define STEPS 6

/* One step of a trigger's test on `side` (0: client, 1: server). */
static void step(pair *p, int side, enum trigger t, unsigned i) {
  pktcrypt_endpoint *self = side ? p->server : p->client, *other = side ? p->client : p->server;
  uint32_t self_peer = side ? p->peer : 0, other_peer = side ? 0 : p->peer;
  switch (t) {
    case SEALED: send(self, other, self_peer, 100, 0); break;
    case OPENED: send(other, self, other_peer, 100, 0); break;
    /* A client alternates sealing and opening; a key server opens (its client's packets are
     * the proofs it rotates at). */
    case TOTAL:
      if (i % 2 && !side) send(self, other, self_peer, 60, 0);
      else send(other, self, other_peer, 60, 0);
      break;
    /* 1000-byte packets against thresholds of multiples of 1000 bytes: the handshake's
     * control messages (well under 1000 bytes) cannot move the step at which it fires. */
    case BYTES:
      if (side) send(other, self, other_peer, 1000, 0);
      else send(self, other, self_peer, 1000, 0);
      break;
    case AUTH: send(other, self, other_peer, 100, 1); break;
    default: CHECK(0);
  }
}

static pktcrypt_config *side_cfg(pktcrypt_config *scfg, pktcrypt_config *ccfg, int side) {
  return side ? scfg : ccfg;
}

/* Sets trigger `t` to `k` steps' worth (absolute: the handshake's own packets count too). */
static void set_trigger(pktcrypt_config *cfg, enum trigger t, uint64_t k) {
  switch (t) {
    case SEALED: cfg->trigger_packets_sealed = k; break;
    case OPENED: cfg->trigger_packets_opened = k; break;
    case TOTAL: cfg->trigger_packets_total = k; break;
    case BYTES: cfg->trigger_bytes = k * 1000; break;
    case AUTH: cfg->trigger_auth_failures = k; break;
    default: CHECK(0);
  }
}

/* Steps trigger `t` on `side` with threshold `k` until the pair rotates; returns the step it
 * rotated at (0: not within `max` steps). */
static unsigned fires_at(int side, enum trigger t, uint64_t k, unsigned max) {
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  apply_test_backend(&ccfg);
  scfg.rekey_interval_ms = 0;
  scfg.reorder_grace_ms = 0;
  ccfg.hello_interval_ms = 3600000;
  set_trigger(side_cfg(&scfg, &ccfg, side), t, k);
  pair p = make_pair(&scfg, &ccfg);
  CHECK(newest(&p) == 1);
  unsigned at = 0;
  for (unsigned i = 1; i <= max && !at; i++) {
    step(&p, side, t, i);
    pump(p.client, p.server);
    /* A key server rotates a client at its next proof of the key (any packet under it from
     * the client): where the step is not one itself, the client sends one, which counts only
     * towards what is not being tested (the server's packets opened). */
    if (side && (t == SEALED || t == AUTH) && newest(&p) == 1) {
      send(p.client, p.server, 0, 40, 0);
      pump(p.client, p.server);
    }
    if (newest(&p) != 1) at = i;
  }
  CHECK(at == 0 || newest(&p) == 2);
  free_pair(&p);
  return at;
}

/* The handshake's own messages count towards the triggers and the status cannot tell them
 * apart from the init key's, so each trigger is measured twice: at threshold K it fires at
 * some step k0; at K + 3 it must fire exactly three steps later, and not before. */
static void run(int side, enum trigger t) {
  unsigned k0 = fires_at(side, t, STEPS, 2 * STEPS);
  unsigned k3 = fires_at(side, t, STEPS + 3, 2 * STEPS + 3);
  if (k0 == 0 || k3 != k0 + 3) {
    fprintf(stderr, "%s %s: fired at step %u with K, %u with K + 3\n",
            side ? "server" : "client", NAMES[t], k0, k3);
    exit(1);
  }
}

/* The age trigger of a client: not a millisecond early, due at the age (its timer says when). */
static void age(void) {
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  scfg.rekey_interval_ms = 0;
  scfg.reorder_grace_ms = 0;
  ccfg.hello_interval_ms = 3600000;
  ccfg.trigger_age_ms = 90000;
  pair p = make_pair(&scfg, &ccfg);
  uint64_t installed = status(p.client, 0).newest_installed_ns;
  uint64_t age_ns = 90000ull * 1000000ull;
  now_ns = installed + age_ns - 1000000ull;
  pump(p.client, p.server);
  CHECK(newest(&p) == 1);
  uint64_t deadline;
  CHECK(pktcrypt_poll_timeout(p.client, &deadline) && deadline <= installed + age_ns);
  now_ns = installed + age_ns;
  pump(p.client, p.server);
  CHECK(newest(&p) == 2);
  free_pair(&p);
}

/* Opens a copy of a sealed packet (opening decrypts in place). */
static pktcrypt_packet_info open_copy(pktcrypt_endpoint *ep, const uint8_t *pkt, size_t len) {
  uint8_t buf[128];
  pktcrypt_packet_info info;
  memcpy(buf, pkt, len);
  CHECK_OK(pktcrypt_open(ep, now_ns, buf, len, &info));
  return info;
}

/* The largest replay window: with sequence number 8300 opened, 109 opens and 108 is too old. */
static void window_8192(void) {
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  scfg.replay_window = 8192;
  ccfg.replay_window = 8192;
  scfg.rekey_interval_ms = 0;
  pair p = make_pair(&scfg, &ccfg);
  enum { N = 8300 };
  static uint8_t sealed[N][128];
  static size_t lens[N];
  uint8_t inner[60];
  for (int i = 0; i < N; i++) {
    make_ipv4(inner, sizeof inner, (uint32_t)i);
    CHECK_OK(pktcrypt_seal(p.client, 0, inner, sizeof inner, sealed[i], sizeof sealed[i],
                           &lens[i], now_ns));
  }
  pktcrypt_packet_info info;
#define OPEN(i) info = open_copy(p.server, sealed[i], lens[i])
  OPEN(N - 1);
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
  /* Consecutive sequence numbers: with packet N - 1 the top, packet N - 8192 is the oldest in
   * the window and N - 8193 just left of it. */
  OPEN(N - 8192 - 1);
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED);
  CHECK(info.reason == PKTCRYPT_DROP_REASON_TOO_OLD || info.reason == PKTCRYPT_DROP_REASON_REPLAY);
  for (int i = N - 8192; i < N - 1; i++) {
    OPEN(i);
    CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
  }
  OPEN(N - 8192);
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_REPLAY);
#undef OPEN
  free_pair(&p);
}

/* Rekey on demand: a key server rotates its client at the client's next packet, a client
 * asks at once; an unknown peer and a client without a generation are refused. */
static void rekey_on_demand(void) {
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  scfg.rekey_interval_ms = 0;
  scfg.reorder_grace_ms = 0;
  ccfg.hello_interval_ms = 3600000;
  pair p = make_pair(&scfg, &ccfg);
  size_t asked = 0;
  CHECK_OK(pktcrypt_rekey(p.server, p.peer, now_ns, &asked));
  CHECK(asked == 1);
  pump(p.client, p.server);
  CHECK(newest(&p) == 1); /* at the client's next packet */
  send(p.client, p.server, 0, 40, 0);
  pump(p.client, p.server);
  CHECK(newest(&p) == 2);
  now_ns += 1000000000ull; /* rotations are rate-limited */
  CHECK_OK(pktcrypt_rekey(p.client, 0, now_ns, &asked));
  CHECK(asked == 1);
  pump(p.client, p.server);
  CHECK(newest(&p) == 3);
  CHECK(pktcrypt_rekey(p.server, 99, now_ns, NULL) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK_OK(pktcrypt_rekey(p.server, PKTCRYPT_ALL_PEERS, now_ns, &asked));
  CHECK(asked == 1);
  CHECK(pktcrypt_rekey(NULL, 0, now_ns, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  free_pair(&p);
  /* A client still in its init handshake has nothing to rotate. */
  char key[128];
  pktcrypt_endpoint *lonely = NULL;
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES256_GCM, 0x6100, key, sizeof key));
  CHECK_OK(pktcrypt_endpoint_new(&ccfg, key, now_ns, &lonely));
  CHECK(pktcrypt_rekey(lonely, 0, now_ns, &asked) == PKTCRYPT_RESULT_ERR_NO_KEY && asked == 0);
  pktcrypt_endpoint_free(lonely);
}

int main(void) {
  for (int side = 0; side < 2; side++)
    for (int t = 0; t < N_TRIGGERS; t++) run(side, (enum trigger)t);
  age();
  rekey_on_demand();
  window_8192();
  printf("triggers: %d counter triggers x 2 sides and the age fire at their thresholds; "
         "8192-packet window edges hold\n",
         N_TRIGGERS);
  return 0;
}
