// hdlm/features.h — MAUVE feature files (docs/mauve.md): an (n, d) matrix of text features plus what produced it.
//
// Two formats, both readable by the MAUVE reference package without conversion:
//  - .npy (numpy format v1.0): '<f4' or '<f8', C order, shape (n, d). np.load(path).
//  - HDF5: dataset `features` float32 (n, d); `lengths` int32 (n) = tokens used per text; optional `sample_index`
//    int64 (n), `token_ids` int32 (n, max_tokens) padded with -1, `texts` (n) variable-length UTF-8 strings; root
//    attributes featurizer, layer, position, tokenizer_sha256, role, dataset (strings), max_text_length,
//    checkpoint_step, seed (int64), dtype ("float32"). h5py.File(path)["features"][:].
// Readers check everything they rely on and name the file and the problem.
#ifndef HDLM_FEATURES_H
#define HDLM_FEATURES_H

#include <stdint.h>

// What produced the features (HDF5 root attributes). NULL strings are written as "".
typedef struct {
    const char *featurizer;        // "gpt2-large", "hdlm-own", ...
    const char *layer;             // "final, after ln_f"
    const char *position;          // "last token"
    const char *tokenizer_sha256;  // sha256 of encoder.json + vocab.bpe
    const char *role;              // "p_human" or "q_model"
    const char *dataset;
    int64_t max_text_length;
    int64_t checkpoint_step;
    int64_t seed;
} hdlm_feature_attrs;

// One feature export. features and lengths are required; the rest may be NULL.
typedef struct {
    int64_t n, d;
    const float *features;       // [n, d]
    const int32_t *lengths;      // [n] tokens actually used per text
    const int64_t *sample_index; // [n] or NULL
    const int32_t *token_ids;    // [n, max_tokens] (first lengths[i] of row i are real) or NULL
    int64_t max_tokens;
    const char *const *texts;    // [n] UTF-8 or NULL
    hdlm_feature_attrs attrs;
} hdlm_feature_export;

// .npy writers (v1.0 header padded to a multiple of 64 bytes, little-endian, C order).
int hdlm_npy_write_f32(const char *path, const float *data, int64_t n, int64_t d);
int hdlm_npy_write_f64(const char *path, const double *data, int64_t n, int64_t d);
// HDF5 writer (serial API, default driver). Overwrites path.
int hdlm_features_write_h5(const char *path, const hdlm_feature_export *exp);

// A feature matrix read back, widened to double (float32 and float64 files enter exactly).
typedef struct {
    int64_t n, d;
    double *data;   // [n, d]
} hdlm_feature_matrix;

// Reads a .npy ('<f4'/'<f8', C order, 2-D) or an HDF5 export (dataset `features`), recognised by their magic bytes.
// Fails naming the file and the problem: missing file, bad magic, unsupported dtype or order, not 2-D, truncated
// data, non-finite values, empty matrix.
int hdlm_features_read(const char *path, hdlm_feature_matrix *out);
void hdlm_feature_matrix_free(hdlm_feature_matrix *m);

// Reads the `lengths` dataset of an HDF5 export ([n] int32, caller frees).
int hdlm_features_read_lengths(const char *path, int32_t **lengths, int64_t *n);

#endif
