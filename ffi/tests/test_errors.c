/* Bad arguments return the right error, never crash, and leave a message on the handle. */
#include <stddef.h>
#include "common.h"

int main(void) {
  pktcrypt_config cfg;
  CHECK(pktcrypt_config_init(NULL, PKTCRYPT_ROLE_CLIENT) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_CLIENT));
    apply_test_backend(&cfg);
  pktcrypt_endpoint *ep = NULL;
  CHECK(pktcrypt_endpoint_new(NULL, NULL, 0, &ep) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_endpoint_new(&cfg, NULL, 0, &ep) == PKTCRYPT_RESULT_ERR_NULL); /* client needs a key */
  CHECK(pktcrypt_endpoint_new(&cfg, "pkc1-AAAA-BBBB", 0, &ep) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK(pktcrypt_endpoint_new(&cfg, "not a key", 0, &ep) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK(ep == NULL);

  char key[128];
  CHECK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, key, 10) == PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);
  CHECK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 7, key, sizeof key) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, NULL, 128) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, key, sizeof key));

  /* A typo in the key code is caught by its checksum. */
  char typo[128];
  strcpy(typo, key);
  typo[strlen(typo) - 2] = typo[strlen(typo) - 2] == 'A' ? 'B' : 'A';
  CHECK(pktcrypt_endpoint_new(&cfg, typo, 0, &ep) == PKTCRYPT_RESULT_ERR_KEY);

  cfg.replay_window = 100;
  CHECK(pktcrypt_endpoint_new(&cfg, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG);
  cfg.replay_window = 1024;

  /* C lets any integer into an enum field and any byte into a bool: values the library's types
   * do not have are refused before anything reads them (review finding, stop 21). */
  {
    pktcrypt_config bad = cfg;
    memset(&bad.suite, 0, sizeof bad.suite); /* no suite 0 */
    CHECK(pktcrypt_endpoint_new(&bad, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
    bad = cfg;
    { unsigned v = 99; memcpy(&bad.backend, &v, sizeof v); }
    CHECK(pktcrypt_endpoint_new(&bad, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
    bad = cfg;
    { unsigned v = 7; memcpy(&bad.role, &v, sizeof v); }
    CHECK(pktcrypt_endpoint_new(&bad, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
    bad = cfg;
    { unsigned char v = 2; memcpy(&bad.esn, &v, 1); }
    CHECK(pktcrypt_endpoint_new(&bad, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
    pktcrypt_group_config g;
    CHECK_OK(pktcrypt_group_config_init(&g));
    { unsigned v = 0; memcpy(&g.suite, &v, sizeof v); }
    pktcrypt_config ccfg;
    CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_GROUP_CONTROLLER));
    CHECK(pktcrypt_group_controller_new(&ccfg, &g, key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
    CHECK_OK(pktcrypt_group_config_init(&g));
    { unsigned char v = 3; memcpy(&g.evict_unresponsive, &v, 1); }
    CHECK(pktcrypt_group_controller_new(&ccfg, &g, key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG && ep == NULL);
  }

  /* The config's size: set by pktcrypt_config_init; a size the library does not know (a header
   * of another version, or a config never initialised) is refused, and nothing is written. */
  CHECK(cfg.struct_size == sizeof(pktcrypt_config));
  pktcrypt_config other;
  memset(&other, 0, sizeof other);
  CHECK(pktcrypt_endpoint_new(&other, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(pktcrypt_config_init_sized(&other, sizeof other - 4, PKTCRYPT_ROLE_CLIENT) ==
        PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(pktcrypt_config_init_sized(&other, sizeof other - 16, PKTCRYPT_ROLE_CLIENT) ==
        PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(pktcrypt_config_init_sized(&other, sizeof other + 8, PKTCRYPT_ROLE_CLIENT) ==
        PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(other.struct_size == 0);
  CHECK(pktcrypt_config_init_sized(NULL, sizeof other, PKTCRYPT_ROLE_CLIENT) == PKTCRYPT_RESULT_ERR_NULL);
  cfg.struct_size = sizeof cfg + 8;
  CHECK(pktcrypt_endpoint_new(&cfg, key, 0, &ep) == PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(ep == NULL);
  CHECK(strstr(pktcrypt_result_message(PKTCRYPT_RESULT_ERR_CONFIG_SIZE), "size") != NULL);
  cfg.struct_size = sizeof cfg;
  /* The first version of the struct (up to `pfs`, before `trigger_packets_total`) is still a
   * size the library knows: a caller compiled with that header keeps working. */
  size_t first = offsetof(pktcrypt_config, trigger_packets_total);
  CHECK(first == sizeof other - 8);
  memset(&other, 0xa5, sizeof other);
  CHECK_OK(pktcrypt_config_init_sized(&other, first, PKTCRYPT_ROLE_CLIENT));
  CHECK(other.struct_size == first);
  CHECK(other.trigger_packets_total == 0xa5a5a5a5a5a5a5a5ull); /* not written */
  CHECK_OK(pktcrypt_endpoint_new(&other, key, 0, &ep));
  pktcrypt_endpoint_free(ep);
  ep = NULL;

  /* The library's version: "MAJOR.MINOR.PATCH"; the ABI in the SONAME is PKTCRYPT_ABI_VERSION. */
  unsigned major, minor, patch;
  CHECK(sscanf(pktcrypt_version(), "%u.%u.%u", &major, &minor, &patch) == 3);
  CHECK(PKTCRYPT_ABI_VERSION == 0);
  CHECK_OK(pktcrypt_endpoint_new(&cfg, key, 0, &ep));

  /* Wrong role. */
  uint32_t peer;
  CHECK(pktcrypt_endpoint_add_peer(ep, key, 0, &peer) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(strlen(pktcrypt_endpoint_last_error(ep)) > 0);
  pktcrypt_config scfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  pktcrypt_endpoint *srv = NULL;
  /* A forward-secrecy policy that is not one. */
  scfg.pfs = -7;
  CHECK(pktcrypt_endpoint_new(&scfg, NULL, 0, &srv) == PKTCRYPT_RESULT_ERR_CONFIG);
  scfg.pfs = PKTCRYPT_PFS_EVERY_REKEY;
  CHECK(pktcrypt_endpoint_new(&scfg, key, 0, &srv) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, 0, &srv));
  CHECK(pktcrypt_endpoint_add_peer(srv, NULL, 0, &peer) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_endpoint_add_peer(srv, key, 0, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK_OK(pktcrypt_endpoint_add_peer(srv, key, 0, &peer));
  CHECK(pktcrypt_endpoint_add_peer(srv, key, 0, &peer) == PKTCRYPT_RESULT_ERR_KEY); /* same SPI twice */

  /* Before its handshake the client has no key: nothing but handshake messages go under the
   * init key (protocol version 3), so data is refused, not sealed. */
  uint8_t inner[200], out[300];
  size_t len;
  make_ipv4(inner, 200, 0);
  CHECK(pktcrypt_seal(ep, 0, inner, 200, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_NO_KEY);
  CHECK(strlen(pktcrypt_endpoint_last_error(ep)) > 0);
  /* The handshake: every datagram each way until both are quiet. */
  for (int moved = 1; moved;) {
    moved = 0;
    uint8_t hs[2048];
    size_t hl;
    uint32_t hp;
    pktcrypt_packet_info hi;
    while (pktcrypt_poll_transmit(ep, hs, sizeof hs, &hl, &hp) == PKTCRYPT_RESULT_OK) {
      CHECK_OK(pktcrypt_open(srv, 0, hs, hl, &hi));
      moved = 1;
    }
    while (pktcrypt_poll_transmit(srv, hs, sizeof hs, &hl, &hp) == PKTCRYPT_RESULT_OK) {
      CHECK_OK(pktcrypt_open(ep, 0, hs, hl, &hi));
      moved = 1;
    }
  }

  /* Short buffers and bad packets. */
  CHECK(pktcrypt_seal(ep, 0, inner, 200, out, 100, &len, 0) == PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);
  CHECK(pktcrypt_seal(ep, 0, NULL, 200, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_seal(ep, 0, inner, 200, out, sizeof out, NULL, 0) == PKTCRYPT_RESULT_ERR_NULL);
  inner[0] = 0x12;
  CHECK(pktcrypt_seal(ep, 0, inner, 200, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  make_ipv4(inner, 200, 0);
  CHECK(pktcrypt_seal(srv, 99, inner, 200, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  /* An output buffer exactly the ESP size works (sealed through scratch space). */
  CHECK_OK(pktcrypt_seal(ep, 0, inner, 200, out, 16 + 200 + 2 + 2 + 16, &len, 0));
  CHECK(len == 236);

  uint8_t dgram[64];
  size_t dlen;
  /* A hello is due after 10 s: a small datagram to fetch. */
  CHECK_OK(pktcrypt_handle_timeout(ep, 20000000000ull));
  CHECK(pktcrypt_poll_transmit(ep, dgram, 4, &dlen, &peer) == PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);
  uint8_t big[256];
  CHECK_OK(pktcrypt_poll_transmit(ep, big, sizeof big, &dlen, &peer)); /* still queued: not lost */
  CHECK(pktcrypt_poll_transmit(ep, big, sizeof big, &dlen, &peer) == PKTCRYPT_RESULT_EMPTY);

  pktcrypt_packet_info info;
  CHECK(pktcrypt_open(ep, 0, NULL, 10, &info) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_open(ep, 0, dgram, 0, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK_OK(pktcrypt_open(ep, 0, dgram, 0, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_TRUNCATED);
  for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 13 + 5);
  CHECK_OK(pktcrypt_open(ep, 0, big, sizeof big, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED);

  pktcrypt_peer_status st;
  CHECK(pktcrypt_status(srv, 42, &st) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK(pktcrypt_status(NULL, 0, &st) == PKTCRYPT_RESULT_ERR_NULL);
  pktcrypt_sa sas[1];
  size_t n;
  CHECK(pktcrypt_export_sas(ep, 0, sas, 1, &n) == PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);
  CHECK(pktcrypt_handle_timeout(NULL, 0) == PKTCRYPT_RESULT_ERR_NULL);
  uint64_t deadline;
  CHECK(!pktcrypt_poll_timeout(NULL, &deadline));
  CHECK(pktcrypt_drop_count(NULL, PKTCRYPT_DROP_REASON_REPLAY) == 0);
  CHECK(strcmp(pktcrypt_result_message(PKTCRYPT_RESULT_ERR_NULL), "a required pointer was NULL") == 0);
  CHECK(pktcrypt_now_ns() > 0);

  pktcrypt_endpoint_free(ep);
  pktcrypt_endpoint_free(srv);
  printf("errors: all bad arguments rejected with the right result\n");
  return 0;
}
