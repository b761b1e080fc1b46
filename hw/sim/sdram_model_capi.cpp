// C entry points to bitlane::SdramModel, so that sim_tests/test_sdram.py can run the Python
// model's tests on the C++ one through ctypes (the harnesses include sdram_model.h directly).
#include <string>

#include "sdram_model.h"

namespace {
struct Handle {
    bitlane::SdramModel model;
    std::string error;
};
}  // namespace

extern "C" {

void* sdram_model_new(double clock_hz, const bitlane::SdramTimingNs* timing, const bitlane::SdramGeometryBits* geometry) {
    return new Handle{bitlane::SdramModel(clock_hz, *timing, *geometry), {}};
}

void sdram_model_free(void* handle) { delete static_cast<Handle*>(handle); }

// The word driven from this edge (0..65535), -1 when not driving, -2 on a violation
// (sdram_model_error says which; the model must not be used after one).
int sdram_model_edge(void* handle, const bitlane::SdramPins* pins) {
    auto* h = static_cast<Handle*>(handle);
    try {
        uint16_t word;
        return h->model.edge(*pins, &word) ? int(word) : -1;
    } catch (const bitlane::SdramViolation& v) {
        h->error = v.what();
        return -2;
    }
}

const char* sdram_model_error(void* handle) { return static_cast<Handle*>(handle)->error.c_str(); }

int sdram_model_stored(void* handle, int bank, int row, int col) {
    return static_cast<Handle*>(handle)->model.stored(bank, row, col);
}

}  // extern "C"
