// libFuzzer target: a checkpoint's index.h5 (hdlm_checkpoint_open checks schema, tensor table and shard list; then
// the stored configuration and a scalar are read). The COMPLETE marker records the fuzzed bytes' checksum, so that
// every input reaches the HDF5 parser (a damaged index with a stale checksum never does: tests/test_bad_inputs.c).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <xxhash.h>

#include "fuzz.h"
#include "hdlm/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char dir[700];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/step_000000001", fuzz_dir());
        mkdir(dir, 0700);
    }
    char marker[800];
    snprintf(marker, sizeof marker, "%s/COMPLETE", dir);
    FILE *f = fopen(marker, "w");
    if (!f) abort();
    fprintf(f, "step_000000001\nindex_xxh64 %016llx\n", (unsigned long long)XXH64(data, size, 0));
    fclose(f);
    char name[64];
    snprintf(name, sizeof name, "step_000000001/index.h5");
    fuzz_file(name, data, size);
    hdlm_ckpt *ck;
    if (hdlm_checkpoint_open(&ck, dir) == 0) {
        char *yaml = NULL;
        int64_t update;
        if (hdlm_checkpoint_config(ck, &yaml) == 0) free(yaml);
        (void)hdlm_checkpoint_scalar(ck, "update", &update);
        hdlm_checkpoint_close(ck);
    }
    return 0;
}
