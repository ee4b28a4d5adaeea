/* Group mode's bad arguments and wrong-role calls return the right error, never crash, and
 * leave a message on the handle. */
#include "common.h"

static uint8_t inner[100], out[256];

int main(void) {
  char group_key[128], k0[128], k1[128], ckey[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0x10000, group_key, sizeof group_key));
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0x20000, k0, sizeof k0));
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0x20001, k1, sizeof k1));
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0x30000, ckey, sizeof ckey));
  pktcrypt_config ccfg, mcfg, scfg;
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_GROUP_CONTROLLER));
  apply_test_backend(&ccfg);
  CHECK_OK(pktcrypt_config_init(&mcfg, PKTCRYPT_ROLE_GROUP_MEMBER));
  apply_test_backend(&mcfg);
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  pktcrypt_group_config g;
  CHECK(pktcrypt_group_config_init(NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK_OK(pktcrypt_group_config_init(&g));
  CHECK(pktcrypt_group_config_init_sized(&g, sizeof g - 8) == PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(g.struct_size == sizeof g && g.retry_ms == 500 && g.evict_unresponsive);

  pktcrypt_endpoint *ep = NULL;
  /* The pairwise constructor refuses the group roles: they need the group's keys. */
  CHECK(pktcrypt_endpoint_new(&ccfg, NULL, 0, &ep) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_endpoint_new(&mcfg, k0, 0, &ep) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);

  /* Controller: NULLs, keys, roles, sizes, settings. */
  CHECK(pktcrypt_group_controller_new(&ccfg, &g, group_key, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_controller_new(&ccfg, &g, NULL, &ep) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_controller_new(&ccfg, &g, "pkc1-AAAA", &ep) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK(pktcrypt_group_controller_new(&scfg, &g, group_key, &ep) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_group_controller_new(&mcfg, &g, group_key, &ep) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  pktcrypt_group_config bad = g;
  bad.struct_size = 4;
  CHECK(pktcrypt_group_controller_new(&ccfg, &bad, group_key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  bad = g;
  bad.retry_ms = 0;
  CHECK(pktcrypt_group_controller_new(&ccfg, &bad, group_key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG);
  bad = g;
  bad.pfs = -7;
  CHECK(pktcrypt_group_controller_new(&ccfg, &bad, group_key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG);
  pktcrypt_config badcfg = ccfg;
  badcfg.replay_window = 100;
  CHECK(pktcrypt_group_controller_new(&badcfg, &g, group_key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG);
  badcfg.struct_size = 8;
  CHECK(pktcrypt_group_controller_new(&badcfg, &g, group_key, &ep) == PKTCRYPT_RESULT_ERR_CONFIG_SIZE);
  CHECK(ep == NULL);

  /* Member: index within the count, a key of its own. */
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 2, 2, k0, 0, &ep) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 0, k0, 0, &ep) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 2, NULL, 0, &ep) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, NULL, 0, 2, k0, 0, &ep) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 2, group_key, 0, &ep) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 2, "not a key", 0, &ep) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK(pktcrypt_group_member_new(&ccfg, &g, group_key, 0, 2, k0, 0, &ep) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 2, k0, 0, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(ep == NULL);

  /* NULL configs mean the defaults. */
  pktcrypt_endpoint *ctl = NULL, *member = NULL, *server = NULL;
  CHECK_OK(pktcrypt_group_controller_new(NULL, NULL, group_key, &ctl));
  pktcrypt_endpoint_free(ctl);
  ctl = NULL;
  CHECK_OK(pktcrypt_group_controller_new(&ccfg, &g, group_key, &ctl));
  CHECK_OK(pktcrypt_group_member_new(&mcfg, &g, group_key, 0, 2, k0, 0, &member));
  CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, 0, &server));
  CHECK(pktcrypt_endpoint_role(ctl) == PKTCRYPT_ROLE_GROUP_CONTROLLER);
  CHECK(pktcrypt_endpoint_role(member) == PKTCRYPT_ROLE_GROUP_MEMBER);

  /* Members are added in order, each with a key of its own; only a controller has members. */
  CHECK(pktcrypt_group_add_member(NULL, 0, k0, 0) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_add_member(ctl, 1, k1, 0) == PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pktcrypt_endpoint_last_error(ctl), "in order") != NULL);
  CHECK(pktcrypt_group_add_member(ctl, 0, NULL, 0) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_add_member(ctl, 0, "pkc1-XYZ", 0) == PKTCRYPT_RESULT_ERR_KEY);
  CHECK_OK(pktcrypt_group_add_member(ctl, 0, k0, 0));
  CHECK(pktcrypt_group_add_member(ctl, 1, k0, 0) == PKTCRYPT_RESULT_ERR_KEY); /* the same key */
  CHECK_OK(pktcrypt_group_add_member(ctl, 1, k1, 0));
  CHECK(pktcrypt_group_add_member(member, 0, k1, 0) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_group_add_member(server, 0, k1, 0) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  uint32_t peer;
  CHECK(pktcrypt_endpoint_add_peer(ctl, ckey, 0, &peer) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_endpoint_add_peer(member, ckey, 0, &peer) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);

  /* Data: a controller seals nothing; a member nothing before its first key. */
  size_t len;
  make_ipv4(inner, sizeof inner, 1);
  CHECK(pktcrypt_seal(ctl, 0, inner, sizeof inner, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(strstr(pktcrypt_endpoint_last_error(ctl), "controller") != NULL);
  CHECK(pktcrypt_seal_transport(ctl, 0, inner, sizeof inner, 0, 0, out, sizeof out, &len, 0) ==
        PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(pktcrypt_seal(member, 0, inner, sizeof inner, out, sizeof out, &len, 0) == PKTCRYPT_RESULT_ERR_NO_KEY);
  CHECK(pktcrypt_seal(member, 0, inner, sizeof inner, out, 10, &len, 0) == PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);

  /* Garbage is dropped and counted, at both. */
  pktcrypt_packet_info info;
  uint8_t junk[64];
  memset(junk, 0xab, sizeof junk);
  CHECK_OK(pktcrypt_open(ctl, 0, junk, sizeof junk, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED);
  memset(junk, 0xab, sizeof junk);
  CHECK_OK(pktcrypt_open(member, 0, junk, sizeof junk, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED);
  CHECK(pktcrypt_open(member, 0, NULL, 10, &info) == PKTCRYPT_RESULT_ERR_NULL);

  /* Status: per member index; the group status only for the group roles. */
  pktcrypt_peer_status ps;
  CHECK(pktcrypt_status(member, 2, &ps) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK(pktcrypt_status(member, 0xffffffffu, &ps) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK_OK(pktcrypt_status(member, 1, &ps));
  CHECK(ps.newest_generation == 0 && ps.tx_generation == 0);
  CHECK(pktcrypt_status(ctl, 2, &ps) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  CHECK_OK(pktcrypt_status(ctl, 1, &ps));
  pktcrypt_sa sas[4];
  size_t n;
  CHECK(pktcrypt_export_sas(member, 5, sas, 4, &n) == PKTCRYPT_RESULT_ERR_UNKNOWN_PEER);
  pktcrypt_group_info st;
  CHECK(pktcrypt_group_status(NULL, &st) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_status(ctl, NULL) == PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_group_status(server, &st) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(strlen(pktcrypt_endpoint_last_error(server)) > 0);
  CHECK_OK(pktcrypt_group_status(member, &st));
  CHECK(st.index == 0 && st.member_count == 2 && st.generation == 0 && st.tx_generation == 0);
  CHECK(st.phase == PKTCRYPT_GROUP_PHASE_UPDATE_COMPLETED && !st.rollout_in_progress && !st.can_seal);
  CHECK_OK(pktcrypt_group_status(ctl, &st));
  CHECK(st.member_count == 2 && st.active_members == 0 && st.generation == 0 && st.index == UINT16_MAX);

  /* Rekey: a controller rolls out (no member active yet: nothing to send); a member cannot. */
  size_t asked = 0;
  CHECK(pktcrypt_rekey(member, 0, 0, &asked) == PKTCRYPT_RESULT_ERR_WRONG_ROLE);
  CHECK(strstr(pktcrypt_endpoint_last_error(member), "controller") != NULL);
  CHECK_OK(pktcrypt_rekey(ctl, 0, 0, &asked));
  CHECK(asked == 0); /* no member has joined: nothing to roll out */

  /* A member's transmits go to its controller (its join); the controller's name members. */
  uint8_t buf[2048];
  uint32_t to;
  CHECK_OK(pktcrypt_poll_transmit(member, buf, sizeof buf, &len, &to));
  CHECK(to == PKTCRYPT_PEER_CONTROLLER);

  pktcrypt_endpoint_free(ctl);
  pktcrypt_endpoint_free(member);
  pktcrypt_endpoint_free(server);
  return 0;
}
