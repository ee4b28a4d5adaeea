/* Shared helpers of the C tests. */
#ifndef PKTCRYPT_TEST_COMMON_H
#define PKTCRYPT_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pktcrypt.h"

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);        \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

#define CHECK_OK(expr)                                                                 \
  do {                                                                                 \
    pktcrypt_result r_ = (expr);                                                       \
    if (r_ != PKTCRYPT_RESULT_OK) {                                                    \
      fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #expr,                 \
              pktcrypt_result_message(r_));                                           \
      exit(1);                                                                         \
    }                                                                                  \
  } while (0)

/* The backends by their config names (pktcrypt.toml's `backend`). */
static const struct {
  const char *name;
  pktcrypt_backend backend;
} TEST_BACKENDS[] = {
    {"rustcrypto", PKTCRYPT_BACKEND_RUSTCRYPTO},
    {"ring", PKTCRYPT_BACKEND_RING},
    {"aws-lc", PKTCRYPT_BACKEND_AWS_LC},
    {"ring+aws-lc", PKTCRYPT_BACKEND_RING_AWS_LC},
};
#define N_TEST_BACKENDS (sizeof TEST_BACKENDS / sizeof TEST_BACKENDS[0])

/* PKTCRYPT_BACKEND=rustcrypto|ring|aws-lc|ring+aws-lc picks the AEAD implementation (the
 * valgrind run uses rustcrypto for the tests that run long: see ffi/Makefile). */
static inline void apply_test_backend(pktcrypt_config *cfg) {
  const char *b = getenv("PKTCRYPT_BACKEND");
  for (size_t i = 0; b && i < N_TEST_BACKENDS; i++)
    if (strcmp(b, TEST_BACKENDS[i].name) == 0) cfg->backend = TEST_BACKENDS[i].backend;
}

/* A minimal IPv4 packet of len bytes whose payload starts with a counter. */
static inline void make_ipv4(uint8_t *p, size_t len, uint32_t counter) {
  memset(p, 0, len);
  p[0] = 0x45;
  p[2] = (uint8_t)(len >> 8);
  p[3] = (uint8_t)len;
  p[8] = 64;
  p[9] = 17;
  memcpy(p + 20, &counter, sizeof counter);
}

/* Delivers every control message between two endpoints both ways until both are quiet, running
 * the timers due at `now` first: the in-memory wiring of a pair. */
static inline void pump_pair(pktcrypt_endpoint *a, pktcrypt_endpoint *b, uint64_t now) {
  uint8_t buf[2048];
  size_t len;
  uint32_t peer;
  for (int round = 0; round < 20; round++) {
    int moved = 0;
    for (int dir = 0; dir < 2; dir++) {
      pktcrypt_endpoint *from = dir ? b : a, *to = dir ? a : b;
      uint64_t deadline;
      if (pktcrypt_poll_timeout(from, &deadline) && deadline <= now)
        CHECK_OK(pktcrypt_handle_timeout(from, now));
      while (pktcrypt_poll_transmit(from, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
        pktcrypt_packet_info info;
        CHECK_OK(pktcrypt_open(to, now, buf, len, &info));
        CHECK(info.kind == PKTCRYPT_PACKET_KIND_CONTROL);
        moved = 1;
      }
    }
    if (!moved) return;
  }
  CHECK(!"control messages never settle");
}

#endif
