/* Runs edgeseal_imu.ino on the host: setup(), then loop() with a PING and CONFIGs fed from argv
 * (hex wire bytes) after 10 iterations. Usage: sketch LOOPS [WIRE_HEX] (tests only). */
#include <Arduino.h>
#include <Wire.h>

HostSerial Serial;
HostWire Wire;
static uint32_t now_us = 0;

uint32_t micros(void) { return now_us += 1000u; }

int HostSerial::available() { return (int)(tail_ - head_); }
int HostSerial::read() { return head_ < tail_ ? in_[head_++] : -1; }
void HostSerial::feed(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len && tail_ < sizeof in_; i++) {
        in_[tail_++] = data[i];
    }
}

void setup();
void loop();

int main(int argc, char **argv) {
    long loops = argc > 1 ? atol(argv[1]) : 10;
    setup();
    for (long i = 0; i < loops; i++) {
        if (i == 10 && argc > 2) {
            const char *hex = argv[2];
            size_t n = strlen(hex) / 2;
            for (size_t j = 0; j < n; j++) {
                unsigned int byte;
                sscanf(hex + 2 * j, "%2x", &byte);
                uint8_t b = (uint8_t)byte;
                Serial.feed(&b, 1);
            }
        }
        loop();
    }
    fflush(stdout);
    return 0;
}
