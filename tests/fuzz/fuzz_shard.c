// libFuzzer target: a token shard file (hdlm_shard_open validates size, header, checksums and every id).
#include <stdint.h>

#include "fuzz.h"
#include "hdlm/shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("train_000000.bin", data, size);
    hdlm_shard s;
    if (hdlm_shard_open(&s, path, 0) == 0) {
        uint64_t sum = 0;
        for (uint64_t i = 0; i < s.info.token_count; i++) sum += s.tokens[i];
        if (sum == UINT64_MAX) abort();   // keeps the reads
        hdlm_shard_close(&s);
    }
    return 0;
}
