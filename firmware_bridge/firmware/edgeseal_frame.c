/*
 * edgeseal serial frames for microcontrollers (docs/firmware_bridge.md "The wire format"). See edgeseal_frame.h.
 */
#include "edgeseal_frame.h"

#include <string.h>

#if defined(__AVR__)
#include <avr/pgmspace.h>
#define ES_FLASH PROGMEM
#define ES_TABLE(i) pgm_read_dword(&es_crc_nibbles[(i)])
#else
#define ES_FLASH
#define ES_TABLE(i) (es_crc_nibbles[(i)])
#endif

/* SAMPLE values go out as IEEE-754 binary32 bit patterns; every target we support uses that. */
typedef char es_float_is_32_bits[(sizeof(float) == 4u) ? 1 : -1];

/* CRC-32/ISO-HDLC (reflected polynomial 0xEDB88320), four bits at a time: a 64-byte table instead of
 * the usual 1 KiB, about half the speed of the byte table and four times the bit-wise loop's. */
static const uint32_t es_crc_nibbles[16] ES_FLASH = {
    0x00000000UL, 0x1DB71064UL, 0x3B6E20C8UL, 0x26D930ACUL, 0x76DC4190UL, 0x6B6B51F4UL,
    0x4DB26158UL, 0x5005713CUL, 0xEDB88320UL, 0xF00F9344UL, 0xD6D6A3E8UL, 0xCB61B38CUL,
    0x9B64C2B0UL, 0x86D3D2D4UL, 0xA00AE278UL, 0xBDBDF21CUL};

uint32_t es_crc32(uint32_t crc, const uint8_t *data, size_t len) {
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ ES_TABLE(crc & 0x0Fu);
        crc = (crc >> 4) ^ ES_TABLE(crc & 0x0Fu);
    }
    return ~crc;
}

/* An incremental COBS writer, so a frame is encoded straight from its parts without a body copy.
 * A block's code byte is reserved lazily: after a full 254-byte block (code 0xFF) a new block starts
 * only if more data follows, which matches the reference encoding (and Python's cobs package). */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t open;
    uint8_t overflow;
} es_cobs_writer;

static void cw_init(es_cobs_writer *w, uint8_t *out, size_t cap) {
    w->out = out;
    w->cap = cap;
    w->code_pos = 0;
    w->pos = 1;
    w->code = 1;
    w->open = 1;
    w->overflow = (uint8_t)(cap < 1u);
}

static size_t cw_reserve(es_cobs_writer *w) {
    size_t at = w->pos++;
    if (at >= w->cap) {
        w->overflow = 1;
    }
    return at;
}

static void cw_close_block(es_cobs_writer *w) {
    if (w->code_pos < w->cap) {
        w->out[w->code_pos] = w->code;
    }
}

static void cw_put(es_cobs_writer *w, uint8_t byte) {
    if (w->overflow) {
        return;
    }
    if (!w->open) {
        w->code_pos = cw_reserve(w);
        w->code = 1;
        w->open = 1;
    }
    if (byte == 0u) {
        cw_close_block(w);
        w->code_pos = cw_reserve(w);
        w->code = 1;
        return;
    }
    if (w->pos >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->out[w->pos++] = byte;
    w->code++;
    if (w->code == 0xFFu) {
        cw_close_block(w);
        w->open = 0;
    }
}

static void cw_put_all(es_cobs_writer *w, const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        cw_put(w, data[i]);
    }
}

/* Returns the encoded length, or 0 on overflow. */
static size_t cw_finish(es_cobs_writer *w) {
    if (w->overflow) {
        return 0;
    }
    if (w->open) {
        cw_close_block(w);
    }
    return w->pos;
}

size_t es_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    es_cobs_writer w;
    if (src == NULL && len > 0u) {
        return 0;
    }
    cw_init(&w, dst, cap);
    cw_put_all(&w, src, len);
    return cw_finish(&w);
}

size_t es_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    size_t in = 0;
    size_t out = 0;
    while (in < len) {
        uint8_t code = src[in++];
        uint8_t k;
        if (code == 0u) {
            return ES_COBS_ERROR;
        }
        for (k = 1; k < code; k++) {
            uint8_t byte;
            if (in >= len) {
                return ES_COBS_ERROR; /* the block runs past the end of the frame */
            }
            byte = src[in++];
            if (byte == 0u || out >= cap) {
                return ES_COBS_ERROR;
            }
            dst[out++] = byte; /* out < in always, so decoding in place is safe */
        }
        if (code != 0xFFu && in < len) {
            if (out >= cap) {
                return ES_COBS_ERROR;
            }
            dst[out++] = 0;
        }
    }
    return out;
}

size_t es_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, size_t len, uint8_t *out,
                       size_t cap) {
    es_cobs_writer w;
    uint8_t head[ES_HEADER_LEN];
    uint8_t tail[ES_CRC_LEN];
    uint32_t crc;
    size_t n;
    if (len > ES_MAX_PAYLOAD || (payload == NULL && len > 0u) || out == NULL) {
        return 0;
    }
    head[0] = type;
    head[1] = seq;
    crc = es_crc32(0, head, sizeof head);
    crc = es_crc32(crc, payload, len);
    tail[0] = (uint8_t)(crc & 0xFFu);
    tail[1] = (uint8_t)((crc >> 8) & 0xFFu);
    tail[2] = (uint8_t)((crc >> 16) & 0xFFu);
    tail[3] = (uint8_t)((crc >> 24) & 0xFFu);
    cw_init(&w, out, cap);
    cw_put_all(&w, head, sizeof head);
    cw_put_all(&w, payload, len);
    cw_put_all(&w, tail, sizeof tail);
    n = cw_finish(&w);
    if (n == 0u || n >= cap) {
        return 0; /* no room for the delimiter */
    }
    out[n] = 0;
    return n + 1u;
}

void es_tx_init(es_tx *tx) { tx->seq = 0; }

size_t es_tx_frame(es_tx *tx, uint8_t type, const uint8_t *payload, size_t len, uint8_t *out, size_t cap) {
    size_t n = es_frame_encode(type, tx->seq, payload, len, out, cap);
    if (n > 0u) {
        tx->seq = (uint8_t)(tx->seq + 1u);
    }
    return n;
}

static void put_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)((v >> 24) & 0xFFu);
}

size_t es_sample_payload(uint32_t t_us, const float *values, size_t n, uint8_t *out, size_t cap) {
    size_t need = 4u + 4u * n;
    size_t i;
    if (out == NULL || need > cap || need > ES_MAX_PAYLOAD || (values == NULL && n > 0u)) {
        return 0;
    }
    put_u32le(out, t_us);
    for (i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], sizeof bits);
        put_u32le(out + 4u + 4u * i, bits);
    }
    return need;
}

size_t es_error_payload(uint16_t code, const char *text, uint8_t *out, size_t cap) {
    size_t n = 2u;
    if (out == NULL || cap < 2u) {
        return 0;
    }
    out[0] = (uint8_t)(code & 0xFFu);
    out[1] = (uint8_t)(code >> 8);
    while (text != NULL && *text != '\0' && n < cap && n < ES_MAX_PAYLOAD) {
        out[n++] = (uint8_t)*text++;
    }
    return n;
}

/* Appends text at *n; returns 0 when it does not fit. */
static int put_text(uint8_t *out, size_t cap, size_t *n, const char *text) {
    while (*text != '\0') {
        if (*n >= cap) {
            return 0;
        }
        out[(*n)++] = (uint8_t)*text++;
    }
    return 1;
}

size_t es_hello_payload(const char *fw, const char *ver, const char *channels, uint32_t hz, uint8_t *out,
                        size_t cap) {
    char digits[11];
    size_t d = sizeof digits - 1u;
    size_t n = 0;
    if (out == NULL || fw == NULL || ver == NULL || channels == NULL) {
        return 0;
    }
    digits[d] = '\0';
    do {
        digits[--d] = (char)('0' + (char)(hz % 10u));
        hz /= 10u;
    } while (hz > 0u);
    if (!put_text(out, cap, &n, "fw=") || !put_text(out, cap, &n, fw) || !put_text(out, cap, &n, ";ver=") ||
        !put_text(out, cap, &n, ver) || !put_text(out, cap, &n, ";ch=") || !put_text(out, cap, &n, channels) ||
        !put_text(out, cap, &n, ";hz=") || !put_text(out, cap, &n, &digits[d]) || n > ES_MAX_PAYLOAD) {
        return 0;
    }
    return n;
}

int es_config_next(const uint8_t *payload, size_t len, size_t *pos, char *key, size_t key_cap, char *value,
                   size_t value_cap) {
    size_t k = 0;
    size_t v = 0;
    int in_value = 0;
    int fits = 1;
    while (*pos < len && payload[*pos] == ';') {
        (*pos)++; /* empty items (";;", a trailing ';') are skipped */
    }
    if (*pos >= len || key_cap == 0u || value_cap == 0u) {
        return 0;
    }
    for (; *pos < len && payload[*pos] != ';'; (*pos)++) {
        char c = (char)payload[*pos];
        if (!in_value && c == '=') {
            in_value = 1;
        } else if (!in_value) {
            if (k + 1u < key_cap) {
                key[k++] = c;
            } else {
                fits = 0;
            }
        } else if (v + 1u < value_cap) {
            value[v++] = c;
        } else {
            fits = 0;
        }
    }
    key[k] = '\0';
    value[v] = '\0';
    return (in_value && fits && k > 0u) ? 1 : -1;
}

void es_rx_init(es_rx *rx) { memset(rx, 0, sizeof *rx); }

int es_rx_feed(es_rx *rx, uint8_t byte) {
    size_t n;
    uint32_t crc;
    uint32_t sent;
    if (byte != 0u) {
        if (rx->discarding) {
            return 0;
        }
        if (rx->len >= sizeof rx->buf) {
            rx->oversize++; /* longer than any body we accept: drop up to the next 0x00 */
            rx->discarding = 1;
            rx->len = 0;
            return 0;
        }
        rx->buf[rx->len++] = byte;
        return 0;
    }
    if (rx->discarding) {
        rx->discarding = 0;
        return 0;
    }
    if (rx->len == 0u) {
        return 0; /* an empty frame (two delimiters in a row) is ignored, not counted */
    }
    n = es_cobs_decode(rx->buf, rx->len, rx->buf, sizeof rx->buf);
    rx->len = 0;
    if (n == ES_COBS_ERROR) {
        rx->cobs_errors++;
        return 0;
    }
    if (n > ES_RX_MAX_BODY) {
        rx->oversize++;
        return 0;
    }
    if (n < ES_MIN_BODY) {
        rx->runts++;
        return 0;
    }
    crc = es_crc32(0, rx->buf, n - ES_CRC_LEN);
    sent = (uint32_t)rx->buf[n - 4u] | ((uint32_t)rx->buf[n - 3u] << 8) | ((uint32_t)rx->buf[n - 2u] << 16) |
           ((uint32_t)rx->buf[n - 1u] << 24);
    if (crc != sent) {
        rx->crc_errors++;
        return 0;
    }
    rx->type = rx->buf[0];
    rx->seq = rx->buf[1];
    rx->payload = rx->buf + ES_HEADER_LEN;
    rx->payload_len = n - ES_MIN_BODY;
    rx->frames++;
    return 1;
}
