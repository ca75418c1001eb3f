// libFuzzer target: a safetensors file (header length, UTF-8 JSON header, dtypes, shapes, offsets, overlaps), its
// tensors converted to fp32 when the header is accepted.
#include <stdint.h>
#include <stdlib.h>

#include "fuzz.h"
#include "hdlm/model_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("model.safetensors", data, size);
    hdlm_safetensors *st;
    if (hdlm_safetensors_open(&st, path) == 0) {
        for (int i = 0; i < st->n_tensors; i++) {
            size_t n = (st->tensors[i].end - st->tensors[i].begin) / 2 + 1;
            float *out = malloc(n * sizeof *out);
            hdlm_safetensors_tensor_f32(st, &st->tensors[i], out);
            free(out);
        }
        hdlm_safetensors_close(st);
    }
    return 0;
}
