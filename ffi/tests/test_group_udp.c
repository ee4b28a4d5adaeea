/* Group mode over real UDP sockets on 127.0.0.1: a controller (this process) and three members
 * (three child processes). Every member sends data to the other two throughout while the
 * controller rolls out a new group key every 500 ms, and every process loses every fourth
 * control datagram it should send. Data keeps flowing across the rollouts. The controller runs in
 * derived mode (`cfg.derived`): a rollout carries a nonce and every member computes the group
 * key from it and the group init key (test_group.c runs the distributed form).
 *
 * The test is paced by rollouts, not by wall time (it also runs under valgrind and on a loaded
 * CI machine): once all three members are active the controller tells them to start counting,
 * lets five rollouts happen, tells them to stop sending, and gives them a moment to drain. In
 * that window every member, once it first sealed (a member that joined after the keys in use
 * were made holds them receive-only until the next rollout's transition), must seal every
 * packet it tries to send, and every other member must open almost all of them: only packets in
 * flight when a member started or stopped counting may be missing. */
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

#define MEMBERS 3
#define ROLLOUTS 5                 /* rollouts in the steady window */
#define DRAIN_NS 300000000ull      /* after "stop": time for packets in flight to arrive */
#define TIMEOUT_NS 90000000000ull  /* give up (and fail) after 90 s, e.g. if a member never joins */

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
  unsigned attempts, sent, received_from[MEMBERS], lost_control, tx_generation, auth_failures;
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

/* Member `index`. `cmd` is its end of a pipe from the controller's process: a byte there means
 * "all members are active: count from now", its end of file "stop sending, drain, report". */
static struct report run_member(uint16_t index, uint16_t base, const char *group_key,
                                const char *member_key, int cmd) {
  pktcrypt_config cfg;
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_GROUP_MEMBER));
  apply_test_backend(&cfg);
  pktcrypt_group_config g = group_config();
  pktcrypt_endpoint *ep = NULL;
  CHECK_OK(pktcrypt_group_member_new(&cfg, &g, group_key, index, MEMBERS, member_key,
                                     pktcrypt_now_ns(), &ep));
  int fd = udp_socket((uint16_t)(base + 1 + index));
  struct report rep = {0};
  unsigned control = 0, sequence = 0;
  int counting = 0, sending = 1, sealed_once = 0;
  uint64_t next_data = pktcrypt_now_ns(), stop_at = 0;
  uint8_t buf[2048], inner[200];
  while (stop_at == 0 || pktcrypt_now_ns() < stop_at) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = cmd, .events = POLLIN}};
    if (poll(p, sending ? 2 : 1, 5) > 0) {
      if (p[0].revents & POLLIN) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
          pktcrypt_packet_info info;
          CHECK_OK(pktcrypt_open(ep, pktcrypt_now_ns(), buf, (size_t)n, &info));
          if (info.kind == PKTCRYPT_PACKET_KIND_DATA) {
            CHECK(info.peer < MEMBERS && info.peer != index);
            if (counting) rep.received_from[info.peer]++;
          }
        }
      }
      if (sending && (p[1].revents & (POLLIN | POLLHUP))) {
        char c;
        if (read(cmd, &c, 1) == 1) {
          counting = 1; /* start of the steady window */
        } else {
          sending = 0; /* end of it: what is in flight may still arrive */
          stop_at = pktcrypt_now_ns() + DRAIN_NS;
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
    if (sending && now >= next_data) { /* 50 data packets per second, to each other member */
      next_data = now + 20000000ull;
      make_ipv4(inner, sizeof inner, sequence++);
      pktcrypt_group_info gst;
      CHECK_OK(pktcrypt_group_status(ep, &gst));
      pktcrypt_result r = pktcrypt_seal(ep, 0, inner, sizeof inner, buf, sizeof buf, &len, now);
      CHECK((r == PKTCRYPT_RESULT_OK) == gst.can_seal);
      /* A member given the keys in use receive-only (it joined after they were made) first
       * seals at the next rollout's transition; from then on every rollout is hitless. */
      sealed_once |= r == PKTCRYPT_RESULT_OK;
      if (counting && sealed_once) rep.attempts++;
      if (r == PKTCRYPT_RESULT_OK) {
        for (uint16_t j = 0; j < MEMBERS; j++) {
          if (j == index) continue;
          struct sockaddr_in to = addr((uint16_t)(base + 1 + j));
          sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
        }
        if (counting) rep.sent++;
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
  close(cmd);
  return rep;
}

int main(void) {
  uint16_t base = (uint16_t)(40000 + getpid() % 5000 * 4);
  char group_key[128], keys[MEMBERS][128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, group_key, sizeof group_key));
  for (int i = 0; i < MEMBERS; i++) CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, keys[i], 128));

  int reports[MEMBERS][2], cmds[MEMBERS][2];
  pid_t pids[MEMBERS];
  for (uint16_t i = 0; i < MEMBERS; i++) {
    CHECK(pipe(reports[i]) == 0 && pipe(cmds[i]) == 0);
    pids[i] = fork();
    CHECK(pids[i] >= 0);
    if (pids[i] == 0) { /* member i */
      for (uint16_t k = 0; k <= i; k++) close(cmds[k][1]); /* EOF must mean the controller */
      close(reports[i][0]);
      usleep(100000); /* the controller's socket first */
      struct report rep = run_member(i, base, group_key, keys[i], cmds[i][0]);
      CHECK(write(reports[i][1], &rep, sizeof rep) == (ssize_t)sizeof rep);
      _exit(0);
    }
    close(reports[i][1]);
    close(cmds[i][0]);
  }

  pktcrypt_config cfg;
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_GROUP_CONTROLLER));
  apply_test_backend(&cfg);
  cfg.derived = true;
  pktcrypt_group_config g = group_config();
  pktcrypt_endpoint *ctl = NULL;
  CHECK_OK(pktcrypt_group_controller_new(&cfg, &g, group_key, &ctl));
  for (uint16_t i = 0; i < MEMBERS; i++) CHECK_OK(pktcrypt_group_add_member(ctl, i, keys[i], pktcrypt_now_ns()));
  int fd = udp_socket(base);
  unsigned control = 0, lost = 0, heard[MEMBERS] = {0};
  uint64_t start = pktcrypt_now_ns(), all_active_ns = 0, first_generation = 0, stop_at = 0;
  uint8_t buf[2048];
  while (stop_at == 0 || pktcrypt_now_ns() < stop_at) {
    if (pktcrypt_now_ns() - start > TIMEOUT_NS) {
      pktcrypt_group_info st;
      CHECK_OK(pktcrypt_group_status(ctl, &st));
      fprintf(stderr, "timeout: %u of %d members active, generation %llu (first with all: %llu)\n",
              (unsigned)st.active_members, MEMBERS, (unsigned long long)st.generation,
              (unsigned long long)first_generation);
      exit(1);
    }
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
    pktcrypt_group_info st;
    CHECK_OK(pktcrypt_group_status(ctl, &st));
    if (first_generation == 0 && st.active_members == MEMBERS) {
      first_generation = st.generation;
      all_active_ns = now - start;
      for (int i = 0; i < MEMBERS; i++) CHECK(write(cmds[i][1], "s", 1) == 1); /* count from now */
    }
    if (first_generation != 0 && stop_at == 0 && st.generation - first_generation >= ROLLOUTS) {
      for (int i = 0; i < MEMBERS; i++) close(cmds[i][1]); /* stop sending, drain, report */
      stop_at = now + DRAIN_NS + 200000000ull;
    }
  }
  struct report reps[MEMBERS];
  for (int i = 0; i < MEMBERS; i++) {
    CHECK(read(reports[i][0], &reps[i], sizeof reps[i]) == (ssize_t)sizeof reps[i]);
    int status;
    CHECK(waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  pktcrypt_group_info st;
  CHECK_OK(pktcrypt_group_status(ctl, &st));
  unsigned total_attempts = 0, total_sent = 0, total_received = 0, lost_members = 0;
  for (int i = 0; i < MEMBERS; i++) {
    total_attempts += reps[i].attempts;
    total_sent += 2 * reps[i].sent;
    lost_members += reps[i].lost_control;
    for (int j = 0; j < MEMBERS; j++) total_received += reps[i].received_from[j];
  }
  printf("group udp: all members active after %.1f s; over %llu rollouts %u data packets tried, "
         "%u sealed and sent member to member, %u opened; generation %llu; control datagrams lost "
         "on purpose: %u by the controller, %u by the members\n",
         all_active_ns / 1e9, (unsigned long long)(st.generation - first_generation), total_attempts,
         total_sent, total_received, (unsigned long long)st.generation, lost, lost_members);
  CHECK(st.active_members == MEMBERS);
  CHECK(lost > 0 && lost_members > 0);
  for (int i = 0; i < MEMBERS; i++) {
    CHECK(heard[i] > 0);
    CHECK(reps[i].auth_failures == 0);
    CHECK(reps[i].tx_generation + 1 >= st.generation); /* it kept up */
    /* Once it sealed, it sealed throughout: every rollout is hitless for a sender. */
    if (reps[i].sent == 0 || reps[i].sent != reps[i].attempts) {
      fprintf(stderr, "member %d sealed %u of %u packets\n", i, reps[i].sent, reps[i].attempts);
      exit(1);
    }
    for (int j = 0; j < MEMBERS; j++) {
      if (j == i) continue;
      /* Only packets in flight when the window opened or closed may be missing. */
      if (reps[i].received_from[j] + 10 < reps[j].sent) {
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
