/* An encrypted UDP echo client: `echo_client PORT KEY_CODE COUNT`.
 * Sends COUNT messages, one every 20 ms, and checks each comes back intact. */
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "pktcrypt.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PORT KEY_CODE COUNT\n", argv[0]);
    return 2;
  }
  unsigned count = (unsigned)atoi(argv[3]);
  pktcrypt_config cfg;
  pktcrypt_result r = pktcrypt_config_init(&cfg, PKTCRYPT_ROLE_CLIENT);
  if (r != PKTCRYPT_RESULT_OK) { /* e.g. a header of another version than the library */
    fprintf(stderr, "echo_client: libpktcrypt %s: %s\n", pktcrypt_version(), pktcrypt_result_message(r));
    return 1;
  }
  if (getenv("PKTCRYPT_BACKEND") && strcmp(getenv("PKTCRYPT_BACKEND"), "rustcrypto") == 0)
    cfg.backend = PKTCRYPT_BACKEND_RUSTCRYPTO;
  cfg.hello_interval_ms = 500;
  cfg.request_timeout_ms = 100;
  pktcrypt_endpoint *ep = NULL;
  r = pktcrypt_endpoint_new(&cfg, argv[2], pktcrypt_now_ns(), &ep);
  if (r != PKTCRYPT_RESULT_OK) {
    fprintf(stderr, "echo_client: %s\n", pktcrypt_result_message(r));
    return 1;
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  uint8_t buf[2048], out[2048], msg[120];
  unsigned sent = 0, back = 0;
  uint64_t next = pktcrypt_now_ns(), stop = next + (count * 20ull + 3000) * 1000000ull;
  while (back < count && pktcrypt_now_ns() < stop) {
    uint64_t now = pktcrypt_now_ns(), deadline;
    if (sent < count && now >= next) {
      next = now + 20000000ull;
      memset(msg, 0, sizeof msg);
      msg[0] = 0x45;
      msg[3] = sizeof msg;
      snprintf((char *)msg + 20, 64, "hello %u", sent);
      size_t len;
      if (pktcrypt_seal(ep, 0, msg, sizeof msg, out, sizeof out, &len, now) == PKTCRYPT_RESULT_OK) {
        sendto(fd, out, len, 0, (struct sockaddr *)&server, sizeof server);
        sent++;
      }
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5) > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      pktcrypt_packet_info info;
      if (n > 0 && pktcrypt_open(ep, pktcrypt_now_ns(), buf, (size_t)n, &info) == PKTCRYPT_RESULT_OK &&
          info.kind == PKTCRYPT_PACKET_KIND_DATA) {
        if (info.len == sizeof msg && strncmp((char *)buf + info.offset + 20, "hello ", 6) == 0) back++;
      }
    }
    now = pktcrypt_now_ns();
    if (pktcrypt_poll_timeout(ep, &deadline) && deadline <= now) pktcrypt_handle_timeout(ep, now);
    size_t len;
    uint32_t to;
    while (pktcrypt_poll_transmit(ep, out, sizeof out, &len, &to) == PKTCRYPT_RESULT_OK)
      sendto(fd, out, len, 0, (struct sockaddr *)&server, sizeof server);
  }
  pktcrypt_peer_status st;
  pktcrypt_status(ep, 0, &st);
  printf("echo_client: %u of %u echoes came back, generation %llu (libpktcrypt %s)\n", back, count,
         (unsigned long long)st.tx_generation, pktcrypt_version());
  pktcrypt_endpoint_free(ep);
  close(fd);
  return back == count ? 0 : 1;
}
