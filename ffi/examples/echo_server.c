/* An encrypted UDP echo server: `echo_server PORT KEY_CODE [SECONDS]`.
 * Holds one client's init key, answers its key requests, and echoes every data packet back
 * sealed under the current key. */
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "pktcrypt.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s PORT KEY_CODE [SECONDS]\n", argv[0]);
    return 2;
  }
  uint64_t run_ns = (argc > 3 ? strtoull(argv[3], NULL, 10) : 10) * 1000000000ull;
  pktcrypt_config cfg;
  pktcrypt_result r = pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_SERVER);
  if (r != PKTCRYPT_RESULT_OK) { /* e.g. a header of another version than the library */
    fprintf(stderr, "echo_server: libpktcrypt %s: %s\n", pktcrypt_version(), pktcrypt_result_message(r));
    return 1;
  }
  if (getenv("PKTCRYPT_BACKEND") && strcmp(getenv("PKTCRYPT_BACKEND"), "rustcrypto") == 0)
    cfg.backend = PKTCRYPT_BACKEND_RUSTCRYPTO;
  cfg.rekey_interval_ms = 500;
  pktcrypt_endpoint *ep = NULL;
  uint32_t peer;
  if (pktcrypt_endpoint_new(&cfg, NULL, pktcrypt_now_ns(), &ep) != PKTCRYPT_RESULT_OK ||
      pktcrypt_endpoint_add_peer(ep, argv[2], pktcrypt_now_ns(), &peer) != PKTCRYPT_RESULT_OK) {
    fprintf(stderr, "echo_server: bad key: %s\n", pktcrypt_endpoint_last_error(ep));
    pktcrypt_endpoint_free(ep);
    return 1;
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0) {
    perror("bind");
    return 1;
  }
  struct sockaddr_in client = {0};
  socklen_t clen = 0;
  uint8_t buf[2048], out[2048];
  unsigned echoed = 0;
  uint64_t start = pktcrypt_now_ns();
  while (pktcrypt_now_ns() - start < run_ns) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10) > 0) {
      clen = sizeof client;
      ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&client, &clen);
      pktcrypt_packet_info info;
      if (n > 0 && pktcrypt_open(ep, pktcrypt_now_ns(), buf, (size_t)n, &info) == PKTCRYPT_RESULT_OK &&
          info.kind == PKTCRYPT_PACKET_KIND_DATA) {
        size_t len;
        if (pktcrypt_seal(ep, peer, buf + info.offset, info.len, out, sizeof out, &len,
                          pktcrypt_now_ns()) == PKTCRYPT_RESULT_OK) {
          sendto(fd, out, len, 0, (struct sockaddr *)&client, clen);
          echoed++;
        }
      }
    }
    uint64_t deadline, now = pktcrypt_now_ns();
    if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now) pktcrypt_handle_timeout(ep, now);
    size_t len;
    uint32_t to;
    while (pktcrypt_poll_transmit(ep, out, sizeof out, &len, &to) == PKTCRYPT_RESULT_OK) {
      if (clen > 0) sendto(fd, out, len, 0, (struct sockaddr *)&client, clen);
    }
  }
  pktcrypt_peer_status st;
  pktcrypt_status(ep, peer, &st);
  printf("echo_server: echoed %u packets, generation %llu\n", echoed,
         (unsigned long long)st.newest_generation);
  pktcrypt_endpoint_free(ep);
  close(fd);
  return 0;
}
