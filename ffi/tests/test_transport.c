/* ESP transport mode in UDP (RFC 4303 §3.1.1, RFC 3948), host to host: a key server and a
 * client in one process seal whole IPv4 and IPv6 packets with pktcrypt_seal_transport and open
 * them with pktcrypt_open_transport: the IP header stays in front (protocol 17), then UDP, then
 * ESP; the receiver restores the original packet and says which mode it was. Replays, forgeries,
 * truncations and packets transport mode does not take are refused and counted. */
#include "common.h"

#define MAX_PKT 2048

static uint64_t now_ns = 1000000000ull;

static void pump(pktcrypt_endpoint *from, pktcrypt_endpoint *to) {
  uint8_t buf[MAX_PKT];
  size_t len;
  uint32_t peer;
  while (pktcrypt_poll_transmit(from, buf, sizeof buf, &len, &peer) == PKTCRYPT_RESULT_OK) {
    pktcrypt_packet_info info;
    CHECK_OK(pktcrypt_open(to, now_ns, buf, len, &info));
  }
}

static uint16_t csum(const uint8_t *p, size_t n, uint32_t acc) {
  for (size_t i = 0; i + 1 < n; i += 2) acc += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) acc += (uint32_t)(p[n - 1] << 8);
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return (uint16_t)~acc;
}

/* IPv4 TCP 10.0.0.1:40000 -> 10.0.0.2:80 with `n` payload bytes, checksums right. */
static size_t ipv4_tcp(uint8_t *p, size_t n, uint8_t fill) {
  size_t len = 40 + n;
  memset(p, 0, 40);
  p[0] = 0x45, p[2] = (uint8_t)(len >> 8), p[3] = (uint8_t)len, p[6] = 0x40, p[8] = 64, p[9] = 6;
  p[12] = 10, p[15] = 1, p[16] = 10, p[19] = 2;
  uint16_t c = csum(p, 20, 0);
  p[10] = (uint8_t)(c >> 8), p[11] = (uint8_t)c;
  uint8_t *t = p + 20;
  t[0] = 0x9c, t[1] = 0x40, t[3] = 80, t[12] = 0x50, t[13] = 0x18, t[14] = 0x20;
  memset(t + 20, fill, n);
  uint32_t acc = 0;
  for (int i = 12; i < 20; i += 2) acc += (uint32_t)(p[i] << 8 | p[i + 1]);
  acc += 6 + (uint32_t)(20 + n);
  c = csum(t, 20 + n, acc);
  t[16] = (uint8_t)(c >> 8), t[17] = (uint8_t)c;
  return len;
}

/* IPv6 UDP 2001:db8::1 -> 2001:db8::2 with `n` payload bytes (checksum left zero: the
 * receiver recomputes it, so the restored packet's checksum is checked separately). */
static size_t ipv6_udp(uint8_t *p, size_t n, uint8_t fill) {
  memset(p, 0, 48);
  p[0] = 0x60, p[4] = (uint8_t)((8 + n) >> 8), p[5] = (uint8_t)(8 + n), p[6] = 17, p[7] = 64;
  p[8] = 0x20, p[9] = 0x01, p[10] = 0x0d, p[11] = 0xb8, p[23] = 1;
  p[24] = 0x20, p[25] = 0x01, p[26] = 0x0d, p[27] = 0xb8, p[39] = 2;
  uint8_t *u = p + 40;
  u[0] = 0x14, u[1] = 0xe9, u[3] = 53, u[4] = (uint8_t)((8 + n) >> 8), u[5] = (uint8_t)(8 + n);
  memset(u + 8, fill, n);
  uint32_t acc = 0;
  for (int i = 8; i < 40; i += 2) acc += (uint32_t)(p[i] << 8 | p[i + 1]);
  acc += 17 + (uint32_t)(8 + n);
  uint16_t c = csum(u, 8 + n, acc);
  if (c == 0) c = 0xffff;
  u[6] = (uint8_t)(c >> 8), u[7] = (uint8_t)c;
  return 48 + n;
}

int main(void) {
  char key[128];
  CHECK_OK(pktcrypt_keygen(PKTCRYPT_SUITE_AES128_GCM, 0x6000, key, sizeof key));
  pktcrypt_config scfg, ccfg;
  CHECK_OK(pktcrypt_config_init(&scfg, PKTCRYPT_ROLE_SERVER));
  apply_test_backend(&scfg);
  CHECK_OK(pktcrypt_config_init(&ccfg, PKTCRYPT_ROLE_CLIENT));
  apply_test_backend(&ccfg);
  pktcrypt_endpoint *server = NULL, *client = NULL;
  CHECK_OK(pktcrypt_endpoint_new(&scfg, NULL, now_ns, &server));
  uint32_t peer;
  CHECK_OK(pktcrypt_endpoint_add_peer(server, key, now_ns, &peer));
  CHECK_OK(pktcrypt_endpoint_new(&ccfg, key, now_ns, &client));
  /* The init handshake; then both sides hold data keys. */
  uint8_t plain[MAX_PKT], pkt[MAX_PKT + PKTCRYPT_TRANSPORT_OVERHEAD], copy[sizeof pkt];
  size_t plen, len;
  for (int i = 0; i < 200; i++) {
    now_ns += 10000000ull;
    uint64_t deadline;
    if (pktcrypt_poll_timeout(client, &deadline) && deadline <= now_ns)
      CHECK_OK(pktcrypt_handle_timeout(client, now_ns));
    pump(client, server);
    pump(server, client);
    plen = ipv4_tcp(plain, 1, 0);
    if (pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, sizeof pkt, &len, now_ns) ==
        PKTCRYPT_RESULT_OK)
      break;
  }

  unsigned opened = 0;
  for (int i = 0; i < 200; i++) {
    int v6 = i % 2, dir = (i / 2) % 2;
    size_t n = (size_t)(i * 7 % 1400);
    plen = v6 ? ipv6_udp(plain, n, (uint8_t)i) : ipv4_tcp(plain, n, (uint8_t)i);
    pktcrypt_endpoint *tx = dir ? server : client, *rx = dir ? client : server;
    uint16_t sport = dir ? 40001 : 0;
    CHECK_OK(pktcrypt_seal_transport(tx, peer, plain, plen, sport, 0, pkt, sizeof pkt, &len,
                                     now_ns));
    CHECK(len <= plen + PKTCRYPT_TRANSPORT_OVERHEAD);
    size_t h = v6 ? 40 : 20;
    CHECK(pkt[v6 ? 6 : 9] == 17);                         /* UDP after the IP header */
    CHECK(memcmp(pkt + (v6 ? 8 : 12), plain + (v6 ? 8 : 12), v6 ? 32 : 8) == 0);
    CHECK((pkt[h] << 8 | pkt[h + 1]) == (dir ? 40001 : PKTCRYPT_ESP_UDP_PORT));
    CHECK((pkt[h + 2] << 8 | pkt[h + 3]) == PKTCRYPT_ESP_UDP_PORT);
    CHECK((size_t)(pkt[h + 4] << 8 | pkt[h + 5]) == len - h);
    if (!v6) CHECK(csum(pkt, 20, 0) == 0);
    pktcrypt_packet_info info;
    uint8_t next = 0;
    CHECK_OK(pktcrypt_open_transport(rx, now_ns, pkt, len, &info, &next));
    CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA);
    CHECK(next == (v6 ? 17 : 6));
    CHECK(info.len == plen);
    CHECK(memcmp(pkt + info.offset, plain, plen) == 0);
    opened++;
  }

  /* Replayed, forged, truncated: dropped with their reasons, and counted. */
  plen = ipv4_tcp(plain, 100, 1);
  CHECK_OK(pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, sizeof pkt, &len, now_ns));
  memcpy(copy, pkt, len);
  pktcrypt_packet_info info;
  uint8_t next;
  CHECK_OK(pktcrypt_open_transport(server, now_ns, pkt, len, &info, &next));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DATA && next == 6);
  memcpy(pkt, copy, len);
  CHECK_OK(pktcrypt_open_transport(server, now_ns, pkt, len, &info, &next));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_REPLAY);
  CHECK(next == 0);
  CHECK_OK(pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, sizeof pkt, &len, now_ns));
  memcpy(copy, pkt, len);
  pkt[len - 1] ^= 1;
  CHECK_OK(pktcrypt_open_transport(server, now_ns, pkt, len, &info, NULL));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED &&
        info.reason == PKTCRYPT_DROP_REASON_AUTH_FAILED);
  memcpy(pkt, copy, len);
  CHECK_OK(pktcrypt_open_transport(server, now_ns, pkt, len - 1, &info, NULL));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED && info.reason == PKTCRYPT_DROP_REASON_TRUNCATED);
  /* The tunnel-mode receiver, given the UDP payload of a transport-mode packet, refuses it by
   * its next header. */
  memcpy(pkt, copy, len);
  CHECK_OK(pktcrypt_open(server, now_ns, pkt + 28, len - 28, &info));
  CHECK(info.kind == PKTCRYPT_PACKET_KIND_DROPPED &&
        info.reason == PKTCRYPT_DROP_REASON_BAD_NEXT_HEADER);
  CHECK(pktcrypt_drop_count(server, PKTCRYPT_DROP_REASON_REPLAY) == 1);
  CHECK(pktcrypt_drop_count(server, PKTCRYPT_DROP_REASON_AUTH_FAILED) == 1);
  CHECK(pktcrypt_drop_count(server, PKTCRYPT_DROP_REASON_TRUNCATED) == 1);

  /* What transport mode does not take: a fragment, IP-in-IP; a short output buffer. */
  plen = ipv4_tcp(plain, 10, 2);
  plain[6] = 0x20; /* more fragments */
  CHECK(pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, sizeof pkt, &len, now_ns) ==
        PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pktcrypt_endpoint_last_error(client), "fragment") != NULL);
  plain[6] = 0x40;
  plain[9] = 4;
  CHECK(pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, sizeof pkt, &len, now_ns) ==
        PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pktcrypt_endpoint_last_error(client), "tunnel mode") != NULL);
  plen = ipv4_tcp(plain, 10, 2);
  CHECK(pktcrypt_seal_transport(client, 0, plain, plen, 0, 0, pkt, plen, &len, now_ns) ==
        PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL);
  CHECK(pktcrypt_seal_transport(client, 0, NULL, plen, 0, 0, pkt, sizeof pkt, &len, now_ns) ==
        PKTCRYPT_RESULT_ERR_NULL);
  CHECK(pktcrypt_open_transport(server, now_ns, pkt, len, NULL, NULL) == PKTCRYPT_RESULT_ERR_NULL);

  printf("transport: %u packets opened in transport mode\n", opened);
  pktcrypt_endpoint_free(client);
  pktcrypt_endpoint_free(server);
  return 0;
}
