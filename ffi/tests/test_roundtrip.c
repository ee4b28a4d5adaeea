/* A key server and a client in one process, wired by hand: the client starts from its init key
 * (the version-3 handshake: a hybrid X25519 + ML-KEM-768 exchange), data flows both ways while
 * the server rotates keys (each rotation a new exchange: pfs = every rekey, the default), and
 * every packet opens. */
#include "common.h"

#define MAX_DGRAM 2048

static uint64_t now_ns = 1000000000ull;

/* Moves every queued datagram from `from` into `to`. Returns how many. */
static int pump(pktcrypt_endpoint *from, pktcrypt_endpoint *to) {
  uint8_t buf[MAX_DGRAM];
  size_t len;
  uint32_t peer;
  int n = 0;
  while (pktcrypt_poll_transmit(from, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
    pktcrypt_packet_info info;
    CHECK_OK(pktcrypt_open(to, now_ns, buf, len, &info));
    CHECK(info.kind == PKTCRYPT_PACKET_KIND_CONTROL);
    n++;
  }
  return n;
}

static void run_timers(pktcrypt_endpoint *ep) {
  uint64_t deadline;
  if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now_ns) {
    CHECK_OK(pktcrypt_handle_timeout(ep, now_ns));
  }
}

int main(void) {
  char key[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_CHACHA20_POLY1305, 0x5000, key, sizeof key));
  CHECK(strncmp(key, "pkc1-", 5) == 0);

  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  apply_test_backend(&ccfg);
  scfg.rekey_interval_ms = 1000;
  scfg.reorder_grace_ms = 10;
  scfg.suite = PKTCRYPT_SUITE_AES256_GCM;

  pktcrypt_endpoint *server = NULL, *client = NULL;
  CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, now_ns, &server));
  uint32_t peer;
  CHECK_OK(pktcrypt_endpoint_add_peer(server, key, now_ns, &peer));
  CHECK_OK(pktcrypt_endpoint_new(&ccfg, key, now_ns, &client));
  CHECK(pktcrypt_endpoint_role(client) == PKTCRYPT_ROLE_CLIENT);

  uint8_t inner[1400], out[MAX_DGRAM];
  unsigned opened = 0, sent = 0;
  for (int step = 0; step < 600; step++) { /* 6 s in 10 ms steps */
    now_ns += 10000000ull;
    run_timers(server);
    run_timers(client);
    while (pump(client, server) + pump(server, client) > 0) {
    }
    for (int dir = 0; dir < 2; dir++) {
      size_t ilen = 20 + (size_t)(step % 1300);
      make_ipv4(inner, ilen, sent);
      size_t len;
      pktcrypt_endpoint *tx = dir ? server : client, *rx = dir ? client : server;
      CHECK_OK(pktcrypt_seal(tx, peer, inner, ilen, out, sizeof out, &len, now_ns));
      sent++;
      pktcrypt_packet_info info;
      CHECK_OK(pktcrypt_open(rx, now_ns, out, len, &info));
      CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
      CHECK(info.len == ilen);
      CHECK(memcmp(out + info.offset, inner, ilen) == 0);
      opened++;
    }
  }
  pktcrypt_peer_status st;
  CHECK_OK(pktcrypt_status(server, peer, &st));
  printf("roundtrip: %u/%u packets opened; server newest generation %llu, transmits %llu\n",
         opened, sent, (unsigned long long)st.newest_generation,
         (unsigned long long)st.tx_generation);
  CHECK(st.newest_generation >= 5); /* rotated every second */
  CHECK(st.tx_generation + 1 == st.newest_generation);
  CHECK(st.newest_exchanged); /* forward secret */
  CHECK(st.newest_installed_ns > 1000000000ull && st.newest_installed_ns <= now_ns);
  pktcrypt_peer_status cst;
  CHECK_OK(pktcrypt_status(client, 0, &cst));
  CHECK(cst.tx_generation == st.newest_generation);
  CHECK(cst.newest_exchanged);

  /* A replayed and a forged packet are dropped with their reasons. */
  size_t len;
  make_ipv4(inner, 100, 1);
  CHECK_OK(pktcrypt_seal(client, 0, inner, 100, out, sizeof out, &len, now_ns));
  uint8_t copy[MAX_DGRAM];
  memcpy(copy, out, len);
  pktcrypt_packet_info info;
  CHECK_OK(pktcrypt_open(server, now_ns, out, len, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
  memcpy(out, copy, len);
  CHECK_OK(pktcrypt_open(server, now_ns, out, len, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_REPLAY);
  CHECK_OK(pktcrypt_seal(client, 0, inner, 100, out, sizeof out, &len, now_ns));
  out[len - 1] ^= 1;
  CHECK_OK(pktcrypt_open(server, now_ns, out, len, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_AUTH_FAILED);
  CHECK(pktcrypt_drop_count(server, PKTCRYPT_DROP_REASON_REPLAY) == 1);
  CHECK(pktcrypt_drop_count(server, PKTCRYPT_DROP_REASON_AUTH_FAILED) == 1);

  /* Exported SAs: both directions of each dynamic generation held (the init key has no key of
   * its own to export: every handshake message under it has one). */
  pktcrypt_sa sas[6];
  size_t n;
  CHECK_OK(pktcrypt_export_sas(client, 0, sas, 6, &n));
  CHECK(n == 4); /* N, N-1, two directions each */
  memset(sas, 0, sizeof sas);

  pktcrypt_endpoint_free(client);
  pktcrypt_endpoint_free(server);
  pktcrypt_endpoint_free(NULL);
  return 0;
}
