/* Just enough of the Arduino core to compile and run edgeseal_imu.ino on the host (tests only).
 * Serial input comes from a buffer the test driver fills; Serial output goes to stdout; micros()
 * advances by 1 ms per call so the sketch's timing loop runs without real time. */
#ifndef ARDUINO_H_HOST_STUB
#define ARDUINO_H_HOST_STUB
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t micros(void);

class HostSerial {
  public:
    void begin(uint32_t) {}
    int available();
    int read();
    size_t write(const uint8_t *data, size_t len) { return fwrite(data, 1, len, stdout); }
    void feed(const uint8_t *data, size_t len);

  private:
    uint8_t in_[4096];
    size_t head_ = 0;
    size_t tail_ = 0;
};

extern HostSerial Serial;
#endif
