/*
 * edgeseal serial frames for microcontrollers (docs/firmware_bridge.md "The wire format").
 *
 * On the wire a frame is COBS(body) 0x00 with
 *     body = type:u8 | seq:u8 | payload | crc:u32 LE
 * and crc = CRC-32/ISO-HDLC (the zlib / Ethernet CRC) over type | seq | payload.
 *
 * Plain C99, no malloc, no stdio, no floating-point formatting: it fits an AVR (ATmega328P, 2 KiB
 * RAM) as well as an ESP32. The caller owns every buffer; ES_WIRE_MAX(n) says how big the output
 * buffer for an n-byte payload must be. On AVR the 64-byte CRC table lives in flash (PROGMEM).
 */
#ifndef EDGESEAL_FRAME_H
#define EDGESEAL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* docs/firmware_bridge.md: a body is at most 1024 bytes. */
#define ES_MAX_BODY 1024u
/* type:u8 + seq:u8 in front, crc:u32 behind. */
#define ES_HEADER_LEN 2u
#define ES_CRC_LEN 4u
#define ES_MIN_BODY (ES_HEADER_LEN + ES_CRC_LEN)
#define ES_MAX_PAYLOAD (ES_MAX_BODY - ES_MIN_BODY)
/* COBS adds one code byte per started 254-byte block; plus the 0x00 delimiter. */
#define ES_COBS_MAX(n) ((n) + (n) / 254u + 1u)
#define ES_WIRE_MAX(payload_len) (ES_COBS_MAX((payload_len) + ES_MIN_BODY) + 1u)
/* Returned by es_cobs_decode for input that is not valid COBS or does not fit. */
#define ES_COBS_ERROR ((size_t)-1)

/* Frame types (docs/firmware_bridge.md). 0x8_ travel host -> microcontroller. */
enum es_frame_type {
    ES_HELLO = 0x01,  /* mcu -> host: "fw=NAME;ver=X;ch=a,b,c;hz=100" */
    ES_SAMPLE = 0x02, /* mcu -> host: t_us:u32 LE, then one f32 LE per channel */
    ES_LOG = 0x03,    /* mcu -> host: UTF-8 text */
    ES_ERROR = 0x04,  /* mcu -> host: code:u16 LE, then UTF-8 text */
    ES_PING = 0x81,   /* host -> mcu: empty; answer with HELLO */
    ES_CONFIG = 0x82  /* host -> mcu: "key=value;..." */
};

/* ERROR codes used by the reference firmware and the simulator. */
enum es_error_code {
    ES_ERR_BAD_CONFIG = 1,
    ES_ERR_UNKNOWN_KEY = 2,
    ES_ERR_OUT_OF_RANGE = 3,
    ES_ERR_SENSOR = 10 /* the sensor did not answer */
};

/* CRC-32/ISO-HDLC. Chains like zlib.crc32: es_crc32(0, ab) == es_crc32(es_crc32(0, a), b). */
uint32_t es_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* COBS-encode len bytes into dst (no delimiter). Returns the encoded length, 0 if cap is too small. */
size_t es_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* COBS-decode len bytes (no delimiter) into dst; dst may equal src (in-place decoding).
 * Returns the decoded length or ES_COBS_ERROR. */
size_t es_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* Build one frame: COBS(body) followed by 0x00. Returns the wire length, or 0 when the payload is
 * longer than ES_MAX_PAYLOAD or out cannot hold ES_WIRE_MAX(len) bytes worth of output. */
size_t es_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, size_t len, uint8_t *out,
                       size_t cap);

/* The sending side: seq rises by one per frame built (mod 256), as docs/firmware_bridge.md requires. */
typedef struct {
    uint8_t seq;
} es_tx;

void es_tx_init(es_tx *tx);
/* es_frame_encode with the next seq; the seq is used up only when the frame was built. */
size_t es_tx_frame(es_tx *tx, uint8_t type, const uint8_t *payload, size_t len, uint8_t *out, size_t cap);

/* SAMPLE payload: t_us:u32 LE, then n f32 LE values. Returns its length, 0 if cap is too small. */
size_t es_sample_payload(uint32_t t_us, const float *values, size_t n, uint8_t *out, size_t cap);

/* ERROR payload: code:u16 LE, then the NUL-terminated text. Returns its length (text is cut to fit). */
size_t es_error_payload(uint16_t code, const char *text, uint8_t *out, size_t cap);

/* HELLO payload "fw=NAME;ver=X;ch=a,b,c;hz=N" (no printf needed). Returns its length, 0 if it does
 * not fit. channels is the comma-separated list, e.g. "ax,ay,az". */
size_t es_hello_payload(const char *fw, const char *ver, const char *channels, uint32_t hz, uint8_t *out,
                        size_t cap);

/* Walk a CONFIG payload "key=value;...": copies the next key and value as NUL-terminated strings and
 * advances *pos. Returns 1 for a pair, 0 at the end, -1 for an item without '=' or one that does not
 * fit the buffers (that item is skipped; call again for the next). */
int es_config_next(const uint8_t *payload, size_t len, size_t *pos, char *key, size_t key_cap, char *value,
                   size_t value_cap);

/* The receiving side: a streaming parser for host -> microcontroller frames. Feed it every byte read;
 * it keeps at most the encoding of ES_RX_MAX_BODY body bytes and resynchronises at every 0x00. */
#ifndef ES_RX_MAX_BODY
/* PING is 6 body bytes and CONFIG "hz=1000;cond=imbalance" about 30: 64 bytes of body leave room and
 * cost 65 bytes of RAM. Define it larger (up to ES_MAX_BODY) before including to accept more. */
#define ES_RX_MAX_BODY 64u
#endif

typedef struct {
    uint8_t buf[ES_COBS_MAX(ES_RX_MAX_BODY)];
    size_t len;
    uint8_t discarding;
    /* The last good frame, valid until the next es_rx_feed call. */
    uint8_t type;
    uint8_t seq;
    const uint8_t *payload;
    size_t payload_len;
    /* Counters (docs/firmware_bridge.md: bad frames are dropped and counted). */
    uint32_t frames;
    uint32_t cobs_errors;
    uint32_t crc_errors;
    uint32_t oversize;
    uint32_t runts;
} es_rx;

void es_rx_init(es_rx *rx);
/* Returns 1 when byte completed a good frame (see rx->type, seq, payload, payload_len), else 0. */
int es_rx_feed(es_rx *rx, uint8_t byte);

#ifdef __cplusplus
}
#endif

#endif /* EDGESEAL_FRAME_H */
