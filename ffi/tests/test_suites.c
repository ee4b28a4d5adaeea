/* Cipher agility on a live pair: a key server switches the suite of future generations
 * (a rotation through a list, a client's own suite, the server-wide suite) while data flows
 * both ways every 20 ms of virtual time and the server rekeys every second or so. Every data
 * packet must open, across every switch; the client's SAs show each generation's suite; the
 * suites follow the rule (generation g of a rotation of n: suites[(g - 1) % n]). */
#include "common.h"

#define MAX_DGRAM 2048
#define STEP_NS 20000000ull

static uint64_t now_ns = 1000000000ull;
static uint32_t counter;
static uint64_t data_opened;

static void pump(pktcrypt_endpoint *a, pktcrypt_endpoint *b) { pump_pair(a, b, now_ns); }

/* One data packet from `from` to `to`: it must open, with its payload. */
static void send(pktcrypt_endpoint *from, pktcrypt_endpoint *to, uint32_t peer) {
  uint8_t inner[200], out[MAX_DGRAM];
  size_t n;
  make_ipv4(inner, sizeof inner, ++counter);
  CHECK_OK(pktcrypt_seal(from, peer, inner, sizeof inner, out, sizeof out, &n, now_ns));
  pktcrypt_packet_info info;
  CHECK_OK(pktcrypt_open(to, now_ns, out, n, &info));
  if (info.kind != PKTCRYPT_PACKET_KIND_DATA) {
    fprintf(stderr, "packet %u did not open: kind %d reason %d\n", counter, (int)info.kind,
            (int)info.reason);
    exit(1);
  }
  CHECK(info.len == sizeof inner && memcmp(out + info.offset, inner, sizeof inner) == 0);
  data_opened++;
}

/* The suite of generation `g` in the client's SAs (0 if it holds none). */
static int suite_of(pktcrypt_endpoint *client, uint64_t g) {
  pktcrypt_sa sas[8];
  size_t n = 0;
  CHECK_OK(pktcrypt_export_sas(client, 0, sas, 8, &n));
  int suite = 0;
  for (size_t i = 0; i < n; i++)
    if (sas[i].generation == g) suite = (int)sas[i].suite;
  memset(sas, 0, sizeof sas);
  return suite;
}

static uint64_t newest(pktcrypt_endpoint *ep, uint32_t peer) {
  pktcrypt_peer_status st;
  CHECK_OK(pktcrypt_status(ep, peer, &st));
  return st.newest_generation;
}

typedef struct {
  pktcrypt_endpoint *server, *client;
  uint32_t peer;
  /* seen[g]: the suite of generation g as the client held it. */
  int seen[256];
  uint64_t top;
} pair;

/* Runs `steps` steps of traffic both ways; records each new generation's suite. */
static void run(pair *p, unsigned steps) {
  for (unsigned i = 0; i < steps; i++) {
    now_ns += STEP_NS;
    pump(p->client, p->server);
    send(p->client, p->server, 0);
    send(p->server, p->client, p->peer);
    pump(p->client, p->server);
    uint64_t g = newest(p->client, 0);
    CHECK(g < 256);
    if (g > p->top) {
      p->top = g;
      p->seen[g] = suite_of(p->client, g);
      /* The previous generation is still held, under its own suite, beside the new one. */
      if (g > 1) CHECK(suite_of(p->client, g - 1) == p->seen[g - 1]);
    }
  }
}

int main(void) {
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  apply_test_backend(&ccfg);
  scfg.rekey_interval_ms = 1000;
  char key[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES256_GCM, 0x7000, key, sizeof key));
  static pair p;
  CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, now_ns, &p.server));
  CHECK_OK(pktcrypt_endpoint_add_peer(p.server, key, now_ns, &p.peer));
  CHECK_OK(pktcrypt_endpoint_new(&ccfg, key, now_ns, &p.client));
  pump(p.client, p.server);
  run(&p, 10);
  CHECK(p.top == 1 && p.seen[1] == PKTCRYPT_SUITE_AES256_GCM);

  /* A rotation, set on the live server: from the next generation on, g gets list[(g-1) % 3]. */
  const pktcrypt_suite list[] = {PKTCRYPT_SUITE_AES256_GCM, PKTCRYPT_SUITE_CHACHA20_POLY1305,
                                 PKTCRYPT_SUITE_AES128_GCM};
  CHECK_OK(pktcrypt_set_suite_rotation(p.server, list, 3));
  run(&p, 400);
  uint64_t rotated = p.top;
  CHECK(rotated >= 6);
  int all = 0;
  for (uint64_t g = 2; g <= rotated; g++) {
    CHECK(p.seen[g] == (int)list[(g - 1) % 3]);
    all |= 1 << p.seen[g];
  }
  CHECK(all == ((1 << 1) | (1 << 2) | (1 << 3)));

  /* The client's own suite beats the rotation. */
  CHECK_OK(pktcrypt_set_suite(p.server, p.peer, PKTCRYPT_SUITE_CHACHA20_POLY1305));
  run(&p, 200);
  uint64_t own = p.top;
  CHECK(own >= rotated + 2);
  for (uint64_t g = rotated + 2; g <= own; g++) CHECK(p.seen[g] == PKTCRYPT_SUITE_CHACHA20_POLY1305);

  /* Taken away, and a server-wide suite (which ends the rotation). */
  CHECK_OK(pktcrypt_clear_peer_suite(p.server, p.peer));
  CHECK_OK(pktcrypt_set_suite(p.server, PKTCRYPT_ALL_PEERS, PKTCRYPT_SUITE_AES128_GCM));
  run(&p, 200);
  CHECK(p.top >= own + 2);
  for (uint64_t g = own + 2; g <= p.top; g++) CHECK(p.seen[g] == PKTCRYPT_SUITE_AES128_GCM);

  /* Refusals, each changing nothing. */
  CHECK(pktcrypt_set_suite(p.client, PKTCRYPT_ALL_PEERS, PKTCRYPT_SUITE_AES128_GCM) ==
        PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_set_suite_rotation(p.client, list, 3) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_set_suite(p.server, p.peer + 1, PKTCRYPT_SUITE_AES128_GCM) ==
        PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK(pktcrypt_clear_peer_suite(p.server, p.peer + 1) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK(pktcrypt_set_suite_rotation(p.server, NULL, 2) == PKTCRYPT_RESULT_ERR_NULL);
  const uint32_t bad[] = {PKTCRYPT_SUITE_AES256_GCM, 7};
  CHECK(pktcrypt_set_suite_rotation(p.server, (const pktcrypt_suite *)bad, 2) ==
        PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pktcrypt_endpoint_last_error(p.server), "suites[1]") != NULL);
  CHECK(pktcrypt_set_suite(NULL, 0, PKTCRYPT_SUITE_AES128_GCM) == PKTCRYPT_RESULT_ERR_NULL);
  /* Not a suite: refused, not read as one. */
  CHECK(pktcrypt_set_suite(p.server, PKTCRYPT_ALL_PEERS, 9) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(pktcrypt_set_suite(p.server, PKTCRYPT_ALL_PEERS, 0) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  /* An empty rotation is the server-wide suite again. */
  CHECK_OK(pktcrypt_set_suite_rotation(p.server, NULL, 0));
  uint64_t before = p.top;
  run(&p, 100);
  CHECK(p.top > before);
  for (uint64_t g = before + 2; g <= p.top; g++) CHECK(p.seen[g] == PKTCRYPT_SUITE_AES128_GCM);

  printf("test_suites: %llu generations, %llu data packets opened across every switch\n",
         (unsigned long long)p.top, (unsigned long long)data_opened);
  pktcrypt_endpoint_free(p.client);
  pktcrypt_endpoint_free(p.server);
  return 0;
}
