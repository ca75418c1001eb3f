// MAUVE feature files (docs/mauve.md): .npy v1.0 and the HDF5 export, writers and a validating reader.
#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hdlm/common.h"
#include "hdlm/features.h"

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
static const unsigned char HDF5_MAGIC[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

// ---- .npy ----

static int npy_write(const char *path, const void *data, int64_t n, int64_t d, const char *descr, size_t item) {
    HDLM_CHECK(n >= 0 && d >= 0, "%s: cannot write a %lld x %lld matrix", path, (long long)n, (long long)d);
    char dict[128];
    int len = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %lld), }", descr,
                       (long long)n, (long long)d);
    // magic (6) + version (2) + header length (2) + dict + padding spaces + '\n' = a multiple of 64
    size_t total = 10 + (size_t)len + 1;
    size_t padded = (total + 63) / 64 * 64;
    char header[192];
    memcpy(header, NPY_MAGIC, 6);
    header[6] = 1, header[7] = 0;
    uint16_t hlen = (uint16_t)(padded - 10);
    header[8] = (char)(hlen & 0xff), header[9] = (char)(hlen >> 8);
    memcpy(header + 10, dict, (size_t)len);
    memset(header + 10 + len, ' ', padded - 10 - (size_t)len - 1);
    header[padded - 1] = '\n';

    FILE *f = fopen(path, "wb");
    HDLM_CHECK(f != NULL, "%s: cannot create (%s)", path, strerror(errno));
    size_t count = (size_t)n * (size_t)d;
    int ok = fwrite(header, 1, padded, f) == padded && fwrite(data, item, count, f) == count;
    ok = (fclose(f) == 0) && ok;
    HDLM_CHECK(ok, "%s: write failed (%s)", path, strerror(errno));
    return 0;
}

int hdlm_npy_write_f32(const char *path, const float *data, int64_t n, int64_t d) {
    return npy_write(path, data, n, d, "<f4", sizeof(float));
}

int hdlm_npy_write_f64(const char *path, const double *data, int64_t n, int64_t d) {
    return npy_write(path, data, n, d, "<f8", sizeof(double));
}

// The value text after 'key': in a numpy header dict, or NULL.
static const char *npy_header_value(const char *header, const char *key) {
    char quoted[32];
    snprintf(quoted, sizeof(quoted), "'%s'", key);
    const char *at = strstr(header, quoted);
    if (!at) return NULL;
    at += strlen(quoted);
    while (*at == ' ') at++;
    if (*at != ':') return NULL;
    at++;
    while (*at == ' ') at++;
    return at;
}

static int npy_read(const char *path, FILE *f, hdlm_feature_matrix *out) {
    unsigned char pre[10];
    HDLM_CHECK(fread(pre, 1, 10, f) == 10 && memcmp(pre, NPY_MAGIC, 6) == 0, "%s: not a .npy file (bad magic)",
               path);
    size_t hlen;
    if (pre[6] == 1) {
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    } else {
        HDLM_CHECK(pre[6] == 2 || pre[6] == 3, "%s: unsupported .npy version %d.%d", path, pre[6], pre[7]);
        unsigned char more[2];
        HDLM_CHECK(fread(more, 1, 2, f) == 2, "%s: truncated .npy header", path);
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    HDLM_CHECK(hlen < (1u << 20), "%s: .npy header of %zu bytes is implausible", path, hlen);
    char *header = hdlm_malloc(hlen + 1);
    size_t got = fread(header, 1, hlen, f);
    header[got] = '\0';
    if (got != hlen) {
        free(header);
        return HDLM_FAIL("%s: truncated .npy header (%zu of %zu bytes)", path, got, hlen);
    }
    long data_start = ftell(f);

    const char *descr = npy_header_value(header, "descr");
    const char *order = npy_header_value(header, "fortran_order");
    const char *shape = npy_header_value(header, "shape");
    size_t item = 0;
    if (descr && strncmp(descr, "'<f4'", 5) == 0) item = 4;
    if (descr && strncmp(descr, "'<f8'", 5) == 0) item = 8;
    int fail = 0;
    if (item == 0) {
        char shown[16] = "?";
        if (descr) snprintf(shown, sizeof(shown), "%.*s", (int)strcspn(descr, ",}"), descr);
        fail = HDLM_FAIL("%s: unsupported dtype %s (expected '<f4' or '<f8', little-endian float32/float64)", path,
                         shown);
    } else if (!order || strncmp(order, "False", 5) != 0) {
        fail = HDLM_FAIL("%s: Fortran-order (column-major) arrays are not supported; save with C order", path);
    }
    long long n = -1, d = -1;
    if (!fail) {
        int consumed = 0;
        if (!shape || sscanf(shape, "(%lld, %lld)%n", &n, &d, &consumed) != 2 || consumed == 0)
            fail = HDLM_FAIL("%s: expected a 2-D array (n, d), header shape is %.*s", path,
                             shape ? (int)strcspn(shape, ")") + 1 : 1, shape ? shape : "?");
        else if (n < 1 || d < 1)
            fail = HDLM_FAIL("%s: empty feature matrix (%lld x %lld)", path, n, d);
    }
    free(header);
    if (fail) return -1;

    HDLM_CHECK(n <= INT64_MAX / d / (long long)item, "%s: shape (%lld, %lld) is too large", path, n, d);
    fseek(f, 0, SEEK_END);
    long long available = (long long)ftell(f) - data_start;
    long long need = n * d * (long long)item;
    HDLM_CHECK(available >= need, "%s: truncated data: shape (%lld, %lld) needs %lld bytes, the file has %lld", path,
               n, d, need, available);
    HDLM_CHECK(available == need, "%s: %lld bytes of trailing data after the (%lld, %lld) array", path,
               available - need, n, d);
    fseek(f, data_start, SEEK_SET);
    void *raw = hdlm_malloc((size_t)need);
    size_t read = fread(raw, 1, (size_t)need, f);
    if (read != (size_t)need) {
        free(raw);
        return HDLM_FAIL("%s: read failed after %zu of %lld bytes", path, read, need);
    }
    out->n = n, out->d = d;
    out->data = hdlm_malloc((size_t)(n * d) * sizeof(double));
    for (long long i = 0; i < n * d; i++) out->data[i] = item == 4 ? (double)((float *)raw)[i] : ((double *)raw)[i];
    free(raw);
    return 0;
}

// ---- HDF5 ----

static int h5_attr_string(hid_t loc, const char *name, const char *value) {
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char *v = value ? value : "";
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, &v);
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    return rc < 0 ? -1 : 0;
}

static int h5_attr_int64(hid_t loc, const char *name, int64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(loc, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT64, &value);
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

static int h5_dataset(hid_t file, const char *name, hid_t file_type, hid_t mem_type, int rank, const hsize_t *dims,
                      const void *data) {
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dset = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = dset < 0 ? -1 : H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    if (dset >= 0) H5Dclose(dset);
    H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

static int features_write_h5_body(hid_t file, const hdlm_feature_export *e) {
    hsize_t matrix[2] = {(hsize_t)e->n, (hsize_t)e->d}, rows[1] = {(hsize_t)e->n};
    int rc = h5_dataset(file, "features", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, matrix, e->features);
    rc |= h5_dataset(file, "lengths", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, rows, e->lengths);
    if (e->sample_index) rc |= h5_dataset(file, "sample_index", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, rows,
                                          e->sample_index);
    if (e->token_ids) {
        hsize_t tokens[2] = {(hsize_t)e->n, (hsize_t)e->max_tokens};
        int32_t *padded = hdlm_malloc((size_t)(e->n * e->max_tokens) * sizeof(int32_t));
        for (int64_t i = 0; i < e->n; i++)
            for (int64_t t = 0; t < e->max_tokens; t++)
                padded[i * e->max_tokens + t] = t < e->lengths[i] ? e->token_ids[i * e->max_tokens + t] : -1;
        rc |= h5_dataset(file, "token_ids", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, tokens, padded);
        free(padded);
    }
    if (e->texts) {
        hid_t type = H5Tcopy(H5T_C_S1);
        H5Tset_size(type, H5T_VARIABLE);
        H5Tset_cset(type, H5T_CSET_UTF8);
        rc |= h5_dataset(file, "texts", type, type, 1, rows, e->texts);
        H5Tclose(type);
    }
    const hdlm_feature_attrs *a = &e->attrs;
    rc |= h5_attr_string(file, "featurizer", a->featurizer);
    rc |= h5_attr_string(file, "layer", a->layer);
    rc |= h5_attr_string(file, "position", a->position);
    rc |= h5_attr_string(file, "tokenizer_sha256", a->tokenizer_sha256);
    rc |= h5_attr_string(file, "role", a->role);
    rc |= h5_attr_string(file, "dataset", a->dataset);
    rc |= h5_attr_string(file, "dtype", "float32");
    rc |= h5_attr_int64(file, "max_text_length", a->max_text_length);
    rc |= h5_attr_int64(file, "checkpoint_step", a->checkpoint_step);
    rc |= h5_attr_int64(file, "seed", a->seed);
    return rc;
}

int hdlm_features_write_h5(const char *path, const hdlm_feature_export *e) {
    HDLM_CHECK(e->n >= 1 && e->d >= 1 && e->features && e->lengths,
               "%s: a feature export needs n >= 1 rows, d >= 1 columns, features and lengths", path);
    HDLM_CHECK(!e->token_ids || e->max_tokens >= 1, "%s: token_ids given with max_tokens %lld", path,
               (long long)e->max_tokens);
    for (int64_t i = 0; i < e->n; i++)
        HDLM_CHECK(e->lengths[i] >= 0 && (!e->token_ids || e->lengths[i] <= e->max_tokens),
                   "%s: lengths[%lld] = %d is outside [0, %lld]", path, (long long)i, e->lengths[i],
                   (long long)(e->token_ids ? e->max_tokens : INT32_MAX));
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    HDLM_CHECK(file >= 0, "%s: cannot create HDF5 file (does the directory exist and is it writable?)", path);
    int rc = features_write_h5_body(file, e);
    rc |= H5Fclose(file) < 0;
    HDLM_CHECK(rc == 0, "%s: HDF5 write failed", path);
    return 0;
}

// Opens dataset `name` of the feature file `path` (a regular HDF5 file); *file and *dset are closed by the caller.
static int h5_open_dataset(const char *path, const char *name, const char *expected, hid_t *file, hid_t *dset) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    HDLM_TRY(hdlm_check_regular(path, "feature file"));
    *file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    HDLM_CHECK(*file >= 0, "%s: cannot open as HDF5 (corrupt or truncated file)", path);
    *dset = H5Lexists(*file, name, H5P_DEFAULT) > 0 ? H5Dopen2(*file, name, H5P_DEFAULT) : -1;
    if (*dset < 0) {
        H5Fclose(*file);
        return HDLM_FAIL("%s: no dataset '%s'%s", path, name, expected);
    }
    return 0;
}

static int h5_read_features(const char *path, hdlm_feature_matrix *out) {
    hid_t file, dset;
    HDLM_TRY(h5_open_dataset(path, "features", " (expected an (n, d) float matrix)", &file, &dset));
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[2] = {0, 0};
    int is_float = H5Tget_class(type) == H5T_FLOAT;
    if (rank == 2) H5Sget_simple_extent_dims(space, dims, NULL);
    int fail = 0;
    if (!is_float)
        fail = HDLM_FAIL("%s: dataset 'features' is not floating point", path);
    else if (rank != 2)
        fail = HDLM_FAIL("%s: dataset 'features' has rank %d, expected 2 (n, d)", path, rank);
    else if (dims[0] < 1 || dims[1] < 1)
        fail = HDLM_FAIL("%s: empty feature matrix (%llu x %llu)", path, (unsigned long long)dims[0],
                         (unsigned long long)dims[1]);
    if (!fail) {
        out->n = (int64_t)dims[0], out->d = (int64_t)dims[1];
        out->data = hdlm_malloc((size_t)(dims[0] * dims[1]) * sizeof(double));
        if (H5Dread(dset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->data) < 0) {
            free(out->data);
            out->data = NULL;
            fail = HDLM_FAIL("%s: reading dataset 'features' failed (truncated file?)", path);
        }
    }
    H5Sclose(space), H5Tclose(type), H5Dclose(dset), H5Fclose(file);
    return fail ? -1 : 0;
}

int hdlm_features_read_lengths(const char *path, int32_t **lengths, int64_t *n) {
    hid_t file, dset;
    HDLM_TRY(h5_open_dataset(path, "lengths", "", &file, &dset));
    hid_t space = H5Dget_space(dset);
    hsize_t dim = 0;
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank == 1) H5Sget_simple_extent_dims(space, &dim, NULL);
    int32_t *buf = rank == 1 ? hdlm_malloc((size_t)dim * sizeof(int32_t) + 1) : NULL;
    int ok = rank == 1 && H5Dread(dset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
    H5Sclose(space), H5Dclose(dset), H5Fclose(file);
    if (!ok) {
        free(buf);
        return HDLM_FAIL("%s: dataset 'lengths' must be a readable 1-D integer array", path);
    }
    *lengths = buf;
    *n = (int64_t)dim;
    return 0;
}

// ---- either format ----

int hdlm_features_read(const char *path, hdlm_feature_matrix *out) {
    memset(out, 0, sizeof(*out));
    FILE *f;
    HDLM_TRY(hdlm_fopen_regular(path, "feature file", &f));
    unsigned char magic[8] = {0};
    size_t got = fread(magic, 1, sizeof(magic), f);
    int rc;
    if (got == sizeof(magic) && memcmp(magic, HDF5_MAGIC, 8) == 0) {
        fclose(f);
        rc = h5_read_features(path, out);
    } else if (got >= 6 && memcmp(magic, NPY_MAGIC, 6) == 0) {
        rewind(f);
        rc = npy_read(path, f, out);
        fclose(f);
    } else {
        fclose(f);
        return HDLM_FAIL("%s: not a feature file (bad magic: expected a .npy or an HDF5 file)", path);
    }
    if (rc != 0) return -1;
    for (int64_t i = 0; i < out->n * out->d; i++) {
        if (!isfinite(out->data[i])) {
            int64_t row = i / out->d, col = i % out->d;
            hdlm_feature_matrix_free(out);
            return HDLM_FAIL("%s: non-finite value at row %lld, column %lld", path, (long long)row, (long long)col);
        }
    }
    return 0;
}

void hdlm_feature_matrix_free(hdlm_feature_matrix *m) {
    free(m->data);
    m->data = NULL;
    m->n = m->d = 0;
}
