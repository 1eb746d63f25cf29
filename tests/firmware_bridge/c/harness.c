/*
 * Host test driver for firmware_bridge/firmware/edgeseal_frame.c (compiled by test_firmware_c.py).
 *
 *   harness encode TYPE SEQ PAYLOAD_HEX   -> the wire bytes as hex
 *   harness decode WIRE_HEX               -> one "type seq payload_hex" line per good frame, then
 *                                            "dropped N" (fed one byte at a time)
 *   harness crc HEX                       -> the CRC-32 as 8 hex digits
 *   harness cobs HEX                      -> COBS encoding as hex, then its decoding as hex
 *   harness stream N                      -> HELLO, LOG, ERROR, then N SAMPLE frames, binary on stdout
 *   harness config PAYLOAD_TEXT           -> one "key=value" line per pair, "bad" per skipped item
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeseal_frame.h"

static size_t from_hex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = strlen(hex) / 2u;
    size_t i;
    if (n > cap) {
        fprintf(stderr, "input too long\n");
        exit(2);
    }
    for (i = 0; i < n; i++) {
        unsigned int byte;
        if (sscanf(hex + 2u * i, "%2x", &byte) != 1) {
            fprintf(stderr, "bad hex\n");
            exit(2);
        }
        out[i] = (uint8_t)byte;
    }
    return n;
}

static void print_hex(const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        printf("%02x", data[i]);
    }
}

static uint8_t in[8192];
static uint8_t out[8192];
static uint8_t back[8192];

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "encode") == 0) {
        size_t len = from_hex(argv[4], in, sizeof in);
        size_t n = es_frame_encode((uint8_t)atoi(argv[2]), (uint8_t)atoi(argv[3]), len ? in : NULL, len, out,
                                   sizeof out);
        if (n == 0u) {
            printf("error\n");
            return 1;
        }
        print_hex(out, n);
        printf("\n");
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "decode") == 0) {
        static es_rx rx;
        size_t len = from_hex(argv[2], in, sizeof in);
        size_t i;
        es_rx_init(&rx);
        for (i = 0; i < len; i++) {
            if (es_rx_feed(&rx, in[i])) {
                printf("%u %u ", rx.type, rx.seq);
                print_hex(rx.payload, rx.payload_len);
                printf("\n");
            }
        }
        printf("dropped %lu\n",
               (unsigned long)(rx.cobs_errors + rx.crc_errors + rx.oversize + rx.runts));
        printf("oversize %lu\n", (unsigned long)rx.oversize);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "crc") == 0) {
        size_t len = from_hex(argv[2], in, sizeof in);
        printf("%08lx\n", (unsigned long)es_crc32(0, in, len));
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "cobs") == 0) {
        size_t len = from_hex(argv[2], in, sizeof in);
        size_t n = es_cobs_encode(in, len, out, sizeof out);
        size_t m = es_cobs_decode(out, n, back, sizeof back);
        print_hex(out, n);
        printf("\n");
        if (m == ES_COBS_ERROR) {
            printf("error\n");
        } else {
            print_hex(back, m);
            printf("\n");
        }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "stream") == 0) {
        es_tx tx;
        long count = atol(argv[2]);
        long i;
        uint8_t payload[64];
        size_t len;
        size_t n;
        es_tx_init(&tx);
        len = es_hello_payload("edgeseal-ref", "1.0.0", "ax,ay,az", 400u, payload, sizeof payload);
        n = es_tx_frame(&tx, ES_HELLO, payload, len, out, sizeof out);
        fwrite(out, 1, n, stdout);
        n = es_tx_frame(&tx, ES_LOG, (const uint8_t *)"boot ok", 7u, out, sizeof out);
        fwrite(out, 1, n, stdout);
        len = es_error_payload(ES_ERR_UNKNOWN_KEY, "unknown key x", payload, sizeof payload);
        n = es_tx_frame(&tx, ES_ERROR, payload, len, out, sizeof out);
        fwrite(out, 1, n, stdout);
        for (i = 0; i < count; i++) {
            float values[3];
            values[0] = (float)i * 0.5f;
            values[1] = -(float)i;
            values[2] = 9.81f;
            len = es_sample_payload((uint32_t)(i * 2500L), values, 3u, payload, sizeof payload);
            n = es_tx_frame(&tx, ES_SAMPLE, payload, len, out, sizeof out);
            fwrite(out, 1, n, stdout);
        }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "config") == 0) {
        char key[8];
        char value[16];
        size_t pos = 0;
        int r;
        size_t len = strlen(argv[2]);
        while ((r = es_config_next((const uint8_t *)argv[2], len, &pos, key, sizeof key, value, sizeof value)) !=
               0) {
            if (r > 0) {
                printf("%s=%s\n", key, value);
            } else {
                printf("bad\n");
            }
        }
        return 0;
    }
    fprintf(stderr, "usage: harness encode|decode|crc|cobs|stream|config ...\n");
    return 2;
}
