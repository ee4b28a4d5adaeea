/* Group mode in one process: a controller and three members wired in memory. The controller
 * rolls out a new group key every second (UPDATE_COMPLETED -> DISTRIBUTION_COMPLETED ->
 * IN_TRANSIT -> UPDATE_COMPLETED at every member); every member seals data for the group
 * throughout and every other member opens each packet, first with every control message
 * delivered, then with a fifth of them lost at random: no data packet is ever lost to a key
 * mismatch (spec §8.1). */
#include "common.h"

#define MEMBERS 3
#define MAX_DGRAM 2048

static uint64_t now_ns = 1000000000ull;
static uint32_t rng = 12345;
static unsigned loss_percent = 0, lost = 0, delivered = 0;

static unsigned next_rand(void) {
  rng = rng * 1103515245u + 12345u;
  return (rng >> 16) % 100;
}

static pktcrypt_endpoint *controller, *members[MEMBERS];

/* Moves every queued control datagram to its receiver, losing loss_percent of them. */
static void pump(void) {
  uint8_t buf[MAX_DGRAM];
  size_t len;
  uint32_t peer;
  int moved = 1;
  while (moved) {
    moved = 0;
    while (pktcrypt_poll_transmit(controller, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
      moved = 1;
      CHECK(peer < MEMBERS); /* a controller's transmits name the member */
      if (next_rand() < loss_percent) {
        lost++;
        continue;
      }
      pktcrypt_packet_info info;
      CHECK_OK(pktcrypt_open(members[peer], now_ns, buf, len, &info));
      CHECK(info.kind == PKTCRYPT_PACKET_KIND_CONTROL ||
            (info.kind == PKTCRYPT_PACKET_KIND_DROPPED &&
             info.reason != PKTCRYPT_DROP_REASON_AUTH_FAILED));
      if (info.kind == PKTCRYPT_PACKET_KIND_CONTROL) CHECK(info.peer == PKTCRYPT_PEER_CONTROLLER);
      delivered++;
    }
    for (uint32_t i = 0; i < MEMBERS; i++) {
      while (pktcrypt_poll_transmit(members[i], buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
        moved = 1;
        CHECK(peer == PKTCRYPT_PEER_CONTROLLER);
        if (next_rand() < loss_percent) {
          lost++;
          continue;
        }
        pktcrypt_packet_info info;
        CHECK_OK(pktcrypt_open(controller, now_ns, buf, len, &info));
        CHECK(info.kind != PKTCRYPT_PACKET_KIND_DATA);
        if (info.kind == PKTCRYPT_PACKET_KIND_CONTROL) CHECK(info.peer == i);
        delivered++;
      }
    }
  }
}

static void run_timers(pktcrypt_endpoint *ep) {
  uint64_t deadline;
  if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now_ns) CHECK_OK(pktcrypt_handle_timeout(ep, now_ns));
}

static unsigned sealed = 0, opened = 0, phases_seen[MEMBERS][3];

/* One 10 ms step: timers, control, then a data packet from every member that can seal, opened
 * by every other member once all three are in the group. */
static void step(int checking) {
  now_ns += 10000000ull;
  run_timers(controller);
  for (int i = 0; i < MEMBERS; i++) run_timers(members[i]);
  pump();
  uint8_t inner[300], out[MAX_DGRAM], copy[MAX_DGRAM];
  for (uint32_t i = 0; i < MEMBERS; i++) {
    pktcrypt_group_info st;
    CHECK_OK(pktcrypt_group_status(members[i], &st));
    phases_seen[i][st.phase]++;
    size_t ilen = 40 + (sealed % 250), len;
    make_ipv4(inner, ilen, sealed);
    pktcrypt_result r = pktcrypt_seal(members[i], 0, inner, ilen, out, sizeof out, &len, now_ns);
    CHECK((r == PKTCRYPT_RESULT_OK) == st.can_seal);
    if (r == PKTCRYPT_RESULT_ERR_NO_KEY) continue; /* before its first key (or after a channel restart) */
    CHECK_OK(r);
    if (!checking) continue;
    sealed++;
    memcpy(copy, out, len);
    for (uint32_t j = 0; j < MEMBERS; j++) {
      if (j == i) continue;
      memcpy(out, copy, len);
      pktcrypt_packet_info info;
      CHECK_OK(pktcrypt_open(members[j], now_ns, out, len, &info));
      if (info.kind != PKTCRYPT_PACKET_KIND_DATA) {
        fprintf(stderr, "member %u -> %u: dropped (%d) at %llu ms\n", i, j, info.reason,
                (unsigned long long)(now_ns / 1000000));
        exit(1);
      }
      CHECK(info.peer == i); /* the member that sealed it */
      CHECK(info.len == ilen && memcmp(out + info.offset, inner, ilen) == 0);
      opened++;
    }
  }
}

int main(void) {
  char group_key[128], member_keys[MEMBERS][128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES256_GCM, 0x10000, group_key, sizeof group_key));
  for (int i = 0; i < MEMBERS; i++)
    CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES256_GCM, 0x20000 + (uint32_t)i, member_keys[i], 128));

  pktcrypt_config ccfg, mcfg;
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_GROUP_CONTROLLER));
  apply_test_backend(&ccfg);
  CHECK_OK(pktcrypt_config_init(&mcfg, PKTCRYPT_ROLE_GROUP_MEMBER));
  apply_test_backend(&mcfg);
  pktcrypt_group_config g;
  CHECK_OK(pktcrypt_group_config_init(&g));
  CHECK(g.struct_size == sizeof g);
  g.rekey_interval_ms = 1000;
  g.retry_ms = 100;
  g.max_backoff_ms = 400;
  g.max_retries = 12;
  g.phase_grace_ms = 20;
  g.suite = PKTCRYPT_SUITE_CHACHA20_POLY1305;

  CHECK_OK(pktcrypt_group_controller_new(&ccfg, &g, group_key, &controller));
  CHECK(pktcrypt_endpoint_role(controller) == PKTCRYPT_ROLE_GROUP_CONTROLLER);
  for (uint16_t i = 0; i < MEMBERS; i++) {
    CHECK_OK(pktcrypt_group_add_member(controller, i, member_keys[i], now_ns));
    CHECK_OK(pktcrypt_group_member_new(&mcfg, &g, group_key, i, MEMBERS, member_keys[i], now_ns,
                                       &members[i]));
    CHECK(pktcrypt_endpoint_role(members[i]) == PKTCRYPT_ROLE_GROUP_MEMBER);
  }

  /* Every member joins; the joins roll out the first keys. */
  int steps = 0;
  for (;; steps++) {
    CHECK(steps < 300);
    step(0);
    int ready = 1;
    for (int i = 0; i < MEMBERS; i++) {
      pktcrypt_group_info st;
      CHECK_OK(pktcrypt_group_status(members[i], &st));
      ready &= st.can_seal;
    }
    if (ready) break;
  }
  pktcrypt_group_info cst;
  CHECK_OK(pktcrypt_group_status(controller, &cst));
  CHECK(cst.member_count == MEMBERS && cst.active_members == MEMBERS && cst.index == UINT16_MAX);
  uint64_t first = cst.generation;

  /* 4 s without loss, then 6 s with a fifth of the control messages lost. */
  for (int s = 0; s < 400; s++) step(1);
  CHECK_OK(pktcrypt_group_status(controller, &cst));
  uint64_t before_loss = cst.generation;
  unsigned lost_quiet = lost;
  loss_percent = 20;
  for (int s = 0; s < 600; s++) step(1);
  loss_percent = 0;
  /* An operator's rekey starts a rollout at once; a quiet second lets it complete. */
  size_t asked = 0;
  CHECK_OK(pktcrypt_rekey(controller, 0, now_ns, &asked));
  CHECK(asked == 1);
  for (int s = 0; s < 100; s++) step(1);

  CHECK_OK(pktcrypt_group_status(controller, &cst));
  printf("group: %u data packets sealed, %u/%u opened by the other members; generation %llu "
         "(%llu rollouts, %llu of them under loss); control datagrams delivered %u, lost %u\n",
         sealed, opened, 2 * sealed, (unsigned long long)cst.generation,
         (unsigned long long)(cst.generation - first),
         (unsigned long long)(cst.generation - before_loss), delivered, lost);
  CHECK(lost_quiet == 0 && lost > 20);
  CHECK(opened == 2 * sealed && sealed > 2500);
  CHECK(before_loss - first >= 3); /* timed rollouts, every second */
  CHECK(cst.generation - before_loss >= 4);
  CHECK(cst.active_members == MEMBERS);
  for (int i = 0; i < MEMBERS; i++) {
    pktcrypt_group_info st;
    CHECK_OK(pktcrypt_group_status(members[i], &st));
    CHECK(st.index == i && st.member_count == MEMBERS);
    CHECK(st.generation + 1 >= cst.generation);
    CHECK(st.tx_generation > 0 && st.can_seal);
    /* Every phase of a rollout was seen at the end of some step. */
    for (int p = 0; p < 3; p++) CHECK(phases_seen[i][p] > 0);
    /* Per member index: its own sender key (it transmits) and another member's. */
    pktcrypt_peer_status ps;
    CHECK_OK(pktcrypt_status(members[i], (uint32_t)i, &ps));
    CHECK(ps.tx_generation == st.tx_generation && ps.packets_sealed > 0);
    CHECK_OK(pktcrypt_status(members[i], (uint32_t)(i + 1) % MEMBERS, &ps));
    CHECK(ps.packets_opened > 0);
    pktcrypt_sa sas[4];
    size_t n;
    CHECK_OK(pktcrypt_export_sas(members[i], (uint32_t)i, sas, 4, &n));
    CHECK(n >= 1 && sas[0].outbound);
    memset(sas, 0, sizeof sas);
  }
  /* The controller's status per member: its control channel. */
  pktcrypt_peer_status ps;
  CHECK_OK(pktcrypt_status(controller, 2, &ps));
  CHECK(ps.newest_generation >= 1);
  CHECK(pktcrypt_drop_count(members[0], PKTCRYPT_DROP_REASON_AUTH_FAILED) == 0);

  pktcrypt_endpoint_free(controller);
  for (int i = 0; i < MEMBERS; i++) pktcrypt_endpoint_free(members[i]);
  return 0;
}
