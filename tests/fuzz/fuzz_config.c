// libFuzzer target: a training configuration in YAML (hdlm_config_load_yaml_string, the enum resolution and the
// model configuration it describes). Every input must end in 0 or -1 with a message, never a crash.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/train_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    hdlm_train_config c;
    hdlm_model_config m;
    if (hdlm_config_defaults(&hdlm_train_config_schema, &c) == 0 &&
        hdlm_config_load_yaml_string(&hdlm_train_config_schema, &c, text, "fuzz") == 0 &&
        hdlm_train_config_resolve(&c) == 0)
        (void)hdlm_train_config_model(&c, &m);
    free(text);
    return 0;
}
