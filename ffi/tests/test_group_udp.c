/* Group mode over real UDP sockets on 127.0.0.1: a controller (this process) and three members
 * (three child processes). Every member sends data to the other two throughout while the
 * controller rolls out a new group key every 700 ms, and every process loses every fourth
 * control datagram it should send. Data keeps flowing across the rollouts: only packets in
 * flight at the start and the end may be missing. */
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

#define MEMBERS 3
#define RUN_NS 6000000000ull

static int udp_socket(uint16_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  return fd;
}

static struct sockaddr_in addr(uint16_t port) {
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

static pktcrypt_group_config group_config(void) {
  pktcrypt_group_config g;
  CHECK_OK(pktcrypt_group_config_init(&g));
  g.rekey_interval_ms = 500;
  g.retry_ms = 100;
  g.max_backoff_ms = 400;
  g.max_retries = 12;
  g.phase_grace_ms = 20;
  return g;
}

/* What a member reports to the controller's process. */
struct report {
  unsigned sent, received_from[MEMBERS], lost_control, tx_generation, auth_failures;
};

/* Sends `buf` to `to` unless it is the `*count`th control datagram and a fourth's to be lost. */
static void send_control(int fd, const uint8_t *buf, size_t len, struct sockaddr_in to,
                         unsigned *count, unsigned *lost) {
  if (++*count % 4 == 0) {
    (*lost)++;
    return;
  }
  sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
}

static struct report run_member(uint16_t index, uint16_t base, const char *group_key,
                                const char *member_key) {
  pktcrypt_config cfg;
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_GROUP_MEMBER));
  apply_test_backend(&cfg);
  pktcrypt_group_config g = group_config();
  pktcrypt_endpoint *ep = NULL;
  CHECK_OK(pktcrypt_group_member_new(&cfg, &g, group_key, index, MEMBERS, member_key,
                                     pktcrypt_now_ns(), &ep));
  int fd = udp_socket((uint16_t)(base + 1 + index));
  struct report rep = {0};
  unsigned control = 0;
  uint64_t start = pktcrypt_now_ns(), next_data = start;
  uint8_t buf[2048], inner[200];
  while (pktcrypt_now_ns() - start < RUN_NS) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5) > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        pktcrypt_packet_info info;
        CHECK_OK(pktcrypt_open(ep, pktcrypt_now_ns(), buf, (size_t)n, &info));
        if (info.kind == PKTCRYPT_PACKET_KIND_DATA) {
          CHECK(info.peer < MEMBERS && info.peer != index);
          rep.received_from[info.peer]++;
        }
      }
    }
    uint64_t now = pktcrypt_now_ns(), deadline;
    if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now) CHECK_OK(pktcrypt_handle_timeout(ep, now));
    size_t len;
    uint32_t peer;
    while (pktcrypt_poll_transmit(ep, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
      CHECK(peer == PKTCRYPT_PEER_CONTROLLER);
      send_control(fd, buf, len, addr(base), &control, &rep.lost_control);
    }
    if (now >= next_data) { /* 50 data packets per second, to each other member */
      next_data = now + 20000000ull;
      make_ipv4(inner, sizeof inner, rep.sent);
      pktcrypt_group_info gst;
      CHECK_OK(pktcrypt_group_status(ep, &gst));
      pktcrypt_result r = pktcrypt_seal(ep, 0, inner, sizeof inner, buf, sizeof buf, &len, now);
      CHECK((r == PKTCRYPT_RESULT_OK) == gst.can_seal);
      if (r == PKTCRYPT_RESULT_OK) {
        for (uint16_t j = 0; j < MEMBERS; j++) {
          if (j == index) continue;
          struct sockaddr_in to = addr((uint16_t)(base + 1 + j));
          sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
        }
        rep.sent++;
      } else {
        CHECK(r == PKTCRYPT_RESULT_ERR_NO_KEY); /* not yet (or not now): receive-only */
      }
    }
  }
  pktcrypt_group_info st;
  CHECK_OK(pktcrypt_group_status(ep, &st));
  rep.tx_generation = (unsigned)st.tx_generation;
  rep.auth_failures = (unsigned)pktcrypt_drop_count(ep, PKTCRYPT_DROP_REASON_AUTH_FAILED);
  pktcrypt_endpoint_free(ep);
  close(fd);
  return rep;
}

int main(void) {
  uint16_t base = (uint16_t)(40000 + getpid() % 5000 * 4);
  char group_key[128], keys[MEMBERS][128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, group_key, sizeof group_key));
  for (int i = 0; i < MEMBERS; i++) CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, keys[i], 128));

  int pipes[MEMBERS][2];
  pid_t pids[MEMBERS];
  for (uint16_t i = 0; i < MEMBERS; i++) {
    CHECK(pipe(pipes[i]) == 0);
    pids[i] = fork();
    CHECK(pids[i] >= 0);
    if (pids[i] == 0) { /* member i */
      close(pipes[i][0]);
      usleep(100000); /* the controller's socket first */
      struct report rep = run_member(i, base, group_key, keys[i]);
      CHECK(write(pipes[i][1], &rep, sizeof rep) == (ssize_t)sizeof rep);
      _exit(0);
    }
    close(pipes[i][1]);
  }

  pktcrypt_config cfg;
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_GROUP_CONTROLLER));
  apply_test_backend(&cfg);
  pktcrypt_group_config g = group_config();
  pktcrypt_endpoint *ctl = NULL;
  CHECK_OK(pktcrypt_group_controller_new(&cfg, &g, group_key, &ctl));
  for (uint16_t i = 0; i < MEMBERS; i++) CHECK_OK(pktcrypt_group_add_member(ctl, i, keys[i], pktcrypt_now_ns()));
  int fd = udp_socket(base);
  unsigned control = 0, lost = 0, heard[MEMBERS] = {0};
  uint64_t start = pktcrypt_now_ns(), first_generation = 0;
  uint8_t buf[2048];
  while (pktcrypt_now_ns() - start < RUN_NS + 300000000ull) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5) > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        pktcrypt_packet_info info;
        CHECK_OK(pktcrypt_open(ctl, pktcrypt_now_ns(), buf, (size_t)n, &info));
        if (info.kind == PKTCRYPT_PACKET_KIND_CONTROL) {
          CHECK(info.peer < MEMBERS);
          heard[info.peer]++;
        }
        CHECK(info.kind != PKTCRYPT_PACKET_KIND_DATA);
      }
    }
    uint64_t now = pktcrypt_now_ns(), deadline;
    if (pktcrypt_poll_timeout(ctl, &deadline) && deadline <= now) CHECK_OK(pktcrypt_handle_timeout(ctl, now));
    size_t len;
    uint32_t peer;
    while (pktcrypt_poll_transmit(ctl, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
      CHECK(peer < MEMBERS);
      send_control(fd, buf, len, addr((uint16_t)(base + 1 + peer)), &control, &lost);
    }
    if (first_generation == 0) {
      pktcrypt_group_info st;
      CHECK_OK(pktcrypt_group_status(ctl, &st));
      if (st.active_members == MEMBERS) first_generation = st.generation;
    }
  }
  struct report reps[MEMBERS];
  for (int i = 0; i < MEMBERS; i++) {
    CHECK(read(pipes[i][0], &reps[i], sizeof reps[i]) == (ssize_t)sizeof reps[i]);
    int status;
    CHECK(waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  pktcrypt_group_info st;
  CHECK_OK(pktcrypt_group_status(ctl, &st));
  unsigned total_sent = 0, total_received = 0, lost_members = 0;
  for (int i = 0; i < MEMBERS; i++) {
    total_sent += 2 * reps[i].sent;
    lost_members += reps[i].lost_control;
    for (int j = 0; j < MEMBERS; j++) total_received += reps[i].received_from[j];
  }
  printf("group udp: %u data packets sent member to member, %u opened; generation %llu "
         "(%llu rollouts with all three members); control datagrams lost on purpose: %u by the "
         "controller, %u by the members\n",
         total_sent, total_received, (unsigned long long)st.generation,
         (unsigned long long)(st.generation - first_generation), lost, lost_members);
  CHECK(first_generation > 0 && st.generation - first_generation >= 3); /* several rollouts */
  CHECK(st.active_members == MEMBERS);
  CHECK(lost > 0 && lost_members > 0);
  for (int i = 0; i < MEMBERS; i++) {
    CHECK(heard[i] > 0);
    CHECK(reps[i].auth_failures == 0);
    CHECK(reps[i].tx_generation + 1 >= st.generation); /* it kept up */
    CHECK(reps[i].sent > 100);
    for (int j = 0; j < MEMBERS; j++) {
      if (j == i) continue;
      /* Only packets sent before the receiver held the first keys, or in flight at the end,
       * may be missing. */
      if (reps[i].received_from[j] + 40 < reps[j].sent) {
        fprintf(stderr, "member %d got %u of member %d's %u packets\n", i, reps[i].received_from[j], j,
                reps[j].sent);
        exit(1);
      }
    }
  }
  pktcrypt_endpoint_free(ctl);
  close(fd);
  return 0;
}
