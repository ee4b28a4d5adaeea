/* Every AEAD backend opens every other backend's packets: for each pair (sender, receiver) and
 * each suite, a key server and a client complete the init handshake and exchange data both ways,
 * short packets and long ones (ring+aws-lc seals a key's first long packet with ring and the next
 * ones with aws-lc-rs, so long packets go more than once). Ignores PKTCRYPT_BACKEND: under
 * valgrind this is the run of the assembly backends (ring's, AWS-LC's). */
#include "common.h"

#define MAX_DGRAM 10000

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
    n++;
  }
  return n;
}

static void round_trip(pktcrypt_endpoint *tx, uint32_t peer, pktcrypt_endpoint *rx, size_t ilen) {
  static uint8_t inner[MAX_DGRAM], out[MAX_DGRAM];
  static uint32_t counter;
  make_ipv4(inner, ilen, counter++);
  size_t len;
  CHECK_OK(pktcrypt_seal(tx, peer, inner, ilen, out, sizeof out, &len, now_ns));
  pktcrypt_packet_info info;
  CHECK_OK(pktcrypt_open(rx, now_ns, out, len, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
  CHECK(info.len == ilen && memcmp(out + info.offset, inner, ilen) == 0);
}

int main(void) {
  static const pktcrypt_suite suites[] = {PKTCRYPT_SUITE_AES128_GCM, PKTCRYPT_SUITE_AES256_GCM,
                                          PKTCRYPT_SUITE_CHACHA20_POLY1305};
  static const size_t sizes[] = {40, 300, 1400, 9000, 9000, 9000};
  unsigned pairs = 0;
  for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
    for (size_t a = 0; a < N_TEST_BACKENDS; a++) {
      for (size_t b = 0; b < N_TEST_BACKENDS; b++) {
        char key[128];
        CHECK_OK(pktcrypt_keygen(suites[s], 0, key, sizeof key));
        pktcrypt_config scfg, ccfg;
        CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
        CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
        scfg.backend = TEST_BACKENDS[a].backend;
        ccfg.backend = TEST_BACKENDS[b].backend;
        pktcrypt_endpoint *server = NULL, *client = NULL;
        uint32_t peer;
        CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, now_ns, &server));
        CHECK_OK(pktcrypt_endpoint_add_peer(server, key, now_ns, &peer));
        CHECK_OK(pktcrypt_endpoint_new(&ccfg, key, now_ns, &client));
        while (pump(client, server) + pump(server, client) > 0) {
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
          round_trip(server, peer, client, sizes[i]);
          round_trip(client, peer, server, sizes[i]);
        }
        pktcrypt_endpoint_free(server);
        pktcrypt_endpoint_free(client);
        pairs++;
      }
    }
  }
  printf("backends: %u (server, client) backend pairs over 3 suites, every packet opened\n", pairs);
  return 0;
}
