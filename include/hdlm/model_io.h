// hdlm/model_io.h — a model's weights in and out of files: checkpoints of the store (include/hdlm/checkpoint.h) and
// safetensors files with the reference's state-dict keys (method §7.1, §8.6), so PyTorch users can load our models and
// we can start from published weights. Commands: tools/hdlm-convert.c; format notes: docs/checkpoint-format.md.
#ifndef HDLM_MODEL_IO_H
#define HDLM_MODEL_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hdlm/checkpoint.h"
#include "hdlm/model.h"
#include "hdlm/train_config.h"

// The model's trainable tensors in table order (the checkpoint's tensor table); the caller frees *descs.
void hdlm_model_trainable_tensors(const hdlm_model *model, hdlm_tensor **descs, int *n_descs);

// Reads a group ("ema" or "params") of the checkpoint directory `dir` into the model's parameters. A checkpoint of
// another model shape is refused with the store's message naming the first differing tensor.
int hdlm_model_read_checkpoint(hdlm_model *model, const char *dir, const char *group);

// Creates the model a checkpoint describes (its stored configuration -> hdlm_train_config -> model configuration) and
// reads `group` into it; buffers (rotary_emb.inv_freq) are recomputed. *config (optional) receives the configuration.
int hdlm_model_load_checkpoint(hdlm_model **out, hdlm_train_config *config, const char *dir, const char *group);

// Writes <root>/step_<step> (collective, like hdlm_checkpoint_save) holding the model's weights as both "params" and
// "ema", the configuration, the scalars update = step and the others 0 (seed and world_size from the configuration
// and the job), and, when with_optimizer, zero "adam_m" / "adam_v" so a training run can resume from it as from a
// fresh start with these weights.
int hdlm_model_save_checkpoint(const char *root, int64_t step, const hdlm_model *model,
                               const hdlm_train_config *config, bool with_optimizer, double *seconds);

// ---- safetensors: 8-byte little-endian header length N, N bytes of JSON
// {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}},
// then the data (offsets relative to its start).
typedef enum { HDLM_ST_F32 = 0, HDLM_ST_BF16 = 1, HDLM_ST_F16 = 2 } hdlm_st_dtype;

typedef struct {
    char *name;
    hdlm_st_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t begin, end;   // byte range inside the data section
} hdlm_st_tensor;

typedef struct {
    char *path;
    char *file;            // the whole file
    unsigned char *data;   // its data section (size bytes)
    size_t size;
    hdlm_st_tensor *tensors;   // in file order
    int n_tensors;
    char *metadata;        // the "__metadata__" object as JSON text, or NULL
} hdlm_safetensors;

// Reads and validates a whole file: header length within the file, JSON object, known dtypes, shapes, offsets inside
// the data section and matching dtype x shape, no two tensors overlapping, no name twice.
int hdlm_safetensors_open(hdlm_safetensors **out, const char *path);
void hdlm_safetensors_close(hdlm_safetensors *st);
const char *hdlm_st_dtype_name(hdlm_st_dtype dtype);
// Tensor t of st converted to fp32 into out (as many floats as t has elements).
void hdlm_safetensors_tensor_f32(const hdlm_safetensors *st, const hdlm_st_tensor *t, float *out);

// Fills the model's trainable tensors from the file (converted to fp32). Each file key, after removing `prefix`
// (NULL or "": none; a key without it is unexpected), must name a trainable tensor of the same shape, and every
// trainable tensor must be present; a "rotary_emb.inv_freq" buffer is not loaded but verified against the model's
// (relative difference <= 1e-6). Missing, unexpected or misshapen tensors are refused by name (the model's weights
// are then partly overwritten: discard it).
int hdlm_safetensors_load_model(const hdlm_safetensors *st, hdlm_model *model, const char *prefix);

// Writes `weights` (a flat buffer laid out as model->params) as fp32 safetensors with the state-dict keys (each
// preceded by `prefix` when not NULL), trainable tensors only, metadata {"format": "pt", "hdlm_config_yaml": yaml}
// (yaml may be NULL).
int hdlm_safetensors_write_model(const char *path, const hdlm_model *model, const float *weights, const char *prefix,
                                 const char *config_yaml);

#endif
