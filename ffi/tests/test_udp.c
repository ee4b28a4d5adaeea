/* A key server and a client as two processes over real UDP sockets on 127.0.0.1, exchanging data
 * through several rekeys while each side drops every third control message it should send. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

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

/* Runs one side; returns the number of data packets received. */
static unsigned run(pktcrypt_endpoint *ep, int fd, struct sockaddr_in to, uint32_t peer,
                    unsigned *sent_out, unsigned *dropped_ctl) {
  uint64_t start = pktcrypt_now_ns(), next_data = start;
  unsigned received = 0, sent = 0, control = 0;
  uint8_t buf[2048], inner[200];
  while (pktcrypt_now_ns() - start < RUN_NS) {
    uint64_t now = pktcrypt_now_ns(), deadline;
    int wait_ms = 5;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        pktcrypt_packet_info info;
        CHECK_OK(pktcrypt_open(ep, pktcrypt_now_ns(), buf, (size_t)n, &info));
        if (info.kind == PKTCRYPT_PACKET_KIND_DATA) received++;
        if (info.kind == PKTCRYPT_PACKET_KIND_DROPPED) {
          CHECK(info.reason != PKTCRYPT_DROP_REASON_AUTH_FAILED);
        }
      }
    }
    now = pktcrypt_now_ns();
    if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now) CHECK_OK(pktcrypt_handle_timeout(ep, now));
    size_t len;
    uint32_t p2;
    while (pktcrypt_poll_transmit(ep, buf, sizeof buf, &len, &p2) == PKTCRYPT_RESULT_OK) {
      if (++control % 3 == 0) { /* lose every third control message */
        (*dropped_ctl)++;
        continue;
      }
      sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
    }
    if (now >= next_data) { /* 100 data packets per second */
      next_data = now + 10000000ull;
      make_ipv4(inner, sizeof inner, sent);
      pktcrypt_result r = pktcrypt_seal(ep, peer, inner, sizeof inner, buf, sizeof buf, &len, now);
      if (r == PKTCRYPT_RESULT_OK) {
        sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
        sent++;
      }
    }
  }
  *sent_out = sent;
  return received;
}

int main(void) {
  uint16_t sport = (uint16_t)(40000 + getpid() % 10000), cport = (uint16_t)(sport + 1);
  char key[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0, key, sizeof key));
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) { /* the client process */
    close(pipefd[0]);
    pktcrypt_config cfg;
    CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_CLIENT));
    apply_test_backend(&cfg);
    cfg.hello_interval_ms = 500;
    cfg.request_timeout_ms = 200;
    cfg.max_backoff_ms = 800;
    pktcrypt_endpoint *c = NULL;
    CHECK_OK(pktcrypt_endpoint_new(&cfg, key, pktcrypt_now_ns(), &c));
    int fd = udp_socket(cport);
    unsigned sent, dropped = 0;
    unsigned got = run(c, fd, addr(sport), 0, &sent, &dropped);
    pktcrypt_peer_status st;
    CHECK_OK(pktcrypt_status(c, 0, &st));
    unsigned report[4] = {got, sent, (unsigned)st.tx_generation, dropped};
    CHECK(write(pipefd[1], report, sizeof report) == (ssize_t)sizeof report);
    pktcrypt_endpoint_free(c);
    close(fd);
    _exit(0);
  }
  close(pipefd[1]);
  pktcrypt_config cfg;
  CHECK_OK(pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&cfg);
  cfg.rekey_interval_ms = 700;
  cfg.reorder_grace_ms = 20;
  pktcrypt_endpoint *s = NULL;
  CHECK_OK(pktcrypt_endpoint_new(&cfg, NULL, pktcrypt_now_ns(), &s));
  uint32_t peer;
  CHECK_OK(pktcrypt_endpoint_add_peer(s, key, pktcrypt_now_ns(), &peer));
  int fd = udp_socket(sport);
  unsigned sent, dropped = 0;
  unsigned got = run(s, fd, addr(cport), peer, &sent, &dropped);
  unsigned report[4];
  CHECK(read(pipefd[0], report, sizeof report) == (ssize_t)sizeof report);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  pktcrypt_peer_status st;
  CHECK_OK(pktcrypt_status(s, peer, &st));
  printf("udp: server got %u of %u client packets, client got %u of %u; generation %llu; "
         "control messages lost on purpose: %u + %u\n",
         got, report[1], report[0], sent, (unsigned long long)st.newest_generation, dropped, report[3]);
  CHECK(st.newest_generation >= 4);             /* several rekeys */
  CHECK(report[2] + 1 >= st.newest_generation); /* the client kept up */
  CHECK(dropped > 0 && report[3] > 0);
  /* Only packets in flight at the end, or sent before the first key, may be missing. */
  CHECK(got + 60 >= report[1]);
  CHECK(report[0] + 60 >= sent);
  CHECK(pktcrypt_drop_count(s, PKTCRYPT_DROP_REASON_AUTH_FAILED) == 0);
  pktcrypt_endpoint_free(s);
  close(fd);
  return 0;
}
