/*
 * edgeseal_imu: stream an MPU-6050 accelerometer as edgeseal frames (docs/firmware_bridge.md "The wire format").
 *
 * Wiring (3.3 V logic boards; use a level shifter or a 5 V-tolerant breakout on an Uno):
 *   MPU-6050 VCC -> 3V3, GND -> GND, SDA -> SDA (Uno A4, ESP32 GPIO21), SCL -> SCL (Uno A5, ESP32 GPIO22)
 *
 * Build: the Arduino IDE wants the sketch in a folder of the same name. Copy this file together with
 * edgeseal_frame.c and edgeseal_frame.h into a folder named edgeseal_imu and open it there
 * (`firmware-bridge firmware DIR` does the copy).
 *
 * Behaviour:
 *   - HELLO "fw=edgeseal-imu;ver=1.0.0;ch=ax,ay,az;hz=N" at boot and in answer to every PING;
 *   - a SAMPLE (t_us = micros(), ax/ay/az in g) every 1/hz seconds;
 *   - CONFIG "hz=N" (50..1000) changes the rate, anything else is answered with an ERROR frame.
 * At 115200 baud a 3-axis SAMPLE (24 bytes on the wire, 240 bit times) fits 480 times a second: use
 * 921600 baud (ESP32, most USB-serial chips) for rates above 400 Hz.
 */
#include <Wire.h>

#include "edgeseal_frame.h"

static const uint32_t BAUD = 115200;
static const uint8_t MPU_ADDR = 0x68;        /* AD0 low */
static const uint8_t REG_PWR_MGMT_1 = 0x6B;  /* write 0 to wake the chip up */
static const uint8_t REG_ACCEL_CONFIG = 0x1C; /* 0 = +-2 g full scale */
static const uint8_t REG_ACCEL_XOUT_H = 0x3B; /* six bytes: X, Y, Z, big endian */
static const float LSB_PER_G = 16384.0f;      /* MPU-6050 datasheet, +-2 g range */
static const uint16_t HZ_MIN = 50;
static const uint16_t HZ_MAX = 1000;

static es_tx tx;
static es_rx rx;
static uint16_t rate_hz = 100;
static uint32_t period_us = 10000;
static uint32_t next_us = 0;
/* Large enough for the longest frame this sketch sends (a HELLO of under 64 payload bytes). */
static uint8_t wire[ES_WIRE_MAX(64)];
static uint8_t payload[64];

static void send_frame(uint8_t type, const uint8_t *data, size_t len) {
    size_t n = es_tx_frame(&tx, type, data, len, wire, sizeof wire);
    if (n > 0) {
        Serial.write(wire, n);
    }
}

static void send_hello(void) {
    size_t len = es_hello_payload("edgeseal-imu", "1.0.0", "ax,ay,az", rate_hz, payload, sizeof payload);
    send_frame(ES_HELLO, payload, len);
}

static void send_error(uint16_t code, const char *text) {
    size_t len = es_error_payload(code, text, payload, sizeof payload);
    send_frame(ES_ERROR, payload, len);
}

static void mpu_write(uint8_t reg, uint8_t value) {
    Wire.beginTransmission(MPU_ADDR);
    Wire.write(reg);
    Wire.write(value);
    Wire.endTransmission();
}

static bool mpu_read_accel(float *g) {
    Wire.beginTransmission(MPU_ADDR);
    Wire.write(REG_ACCEL_XOUT_H);
    if (Wire.endTransmission(false) != 0) {
        return false;
    }
    if (Wire.requestFrom(MPU_ADDR, (uint8_t)6) != 6) {
        return false;
    }
    for (uint8_t i = 0; i < 3; i++) {
        uint8_t high = (uint8_t)Wire.read();
        uint8_t low = (uint8_t)Wire.read();
        int16_t raw = (int16_t)(((uint16_t)high << 8) | low);
        g[i] = (float)raw / LSB_PER_G;
    }
    return true;
}

static void apply_config(const uint8_t *data, size_t len) {
    char key[8];
    char value[12];
    size_t pos = 0;
    int r;
    while ((r = es_config_next(data, len, &pos, key, sizeof key, value, sizeof value)) != 0) {
        if (r < 0) {
            send_error(ES_ERR_BAD_CONFIG, "bad config item");
        } else if (strcmp(key, "hz") == 0) {
            long hz = atol(value);
            if (hz < HZ_MIN || hz > HZ_MAX) {
                send_error(ES_ERR_OUT_OF_RANGE, "hz outside 50..1000");
            } else {
                rate_hz = (uint16_t)hz;
                period_us = 1000000UL / rate_hz;
                send_frame(ES_LOG, (const uint8_t *)"config hz", 9);
            }
        } else {
            send_error(ES_ERR_UNKNOWN_KEY, "unknown key");
        }
    }
}

void setup() {
    Serial.begin(BAUD);
    Wire.begin();
    Wire.setClock(400000);
    mpu_write(REG_PWR_MGMT_1, 0);
    mpu_write(REG_ACCEL_CONFIG, 0);
    es_tx_init(&tx);
    es_rx_init(&rx);
    send_hello(); /* the host may have missed it while the board was resetting; it PINGs again */
    next_us = micros();
}

void loop() {
    while (Serial.available() > 0) {
        if (es_rx_feed(&rx, (uint8_t)Serial.read())) {
            if (rx.type == ES_PING) {
                send_hello();
            } else if (rx.type == ES_CONFIG) {
                apply_config(rx.payload, rx.payload_len);
            }
        }
    }
    uint32_t now = micros();
    if ((int32_t)(now - next_us) >= 0) { /* wrap-safe: micros() wraps every ~71.6 minutes */
        next_us += period_us;
        float g[3];
        if (mpu_read_accel(g)) {
            size_t len = es_sample_payload(now, g, 3, payload, sizeof payload);
            send_frame(ES_SAMPLE, payload, len);
        } else {
            send_error(ES_ERR_SENSOR, "imu read failed");
        }
    }
}
