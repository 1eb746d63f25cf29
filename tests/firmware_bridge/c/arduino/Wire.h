/* A fake I2C bus with an MPU-6050 that always reads ax=0.5 g, ay=-0.25 g, az=1 g (tests only). */
#ifndef WIRE_H_HOST_STUB
#define WIRE_H_HOST_STUB
#include <stdint.h>

class HostWire {
  public:
    void begin() {}
    void setClock(uint32_t) {}
    void beginTransmission(uint8_t) {}
    size_t write(uint8_t) { return 1; }
    uint8_t endTransmission(bool = true) { return 0; }
    uint8_t requestFrom(uint8_t, uint8_t n) {
        pos_ = 0;
        return n;
    }
    int read() {
        /* 0.5 g = 8192, -0.25 g = -4096, 1 g = 16384 at 16384 LSB/g, big endian */
        static const uint8_t regs[6] = {0x20, 0x00, 0xF0, 0x00, 0x40, 0x00};
        return regs[pos_++ % 6];
    }

  private:
    uint8_t pos_ = 0;
};

extern HostWire Wire;
#endif
