// Sharded HDF5 checkpoints: collective atomic save, validated reads at any world size (include/hdlm/checkpoint.h,
// docs/checkpoint-format.md). Each rank writes its own shard file with the serial HDF5 API (no collective metadata
// rules, a failing rank cannot corrupt another's file); rank 0 then writes index.h5 with one virtual dataset per
// tensor and publishes the directory.
#define _GNU_SOURCE
#include "hdlm/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <inttypes.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#include "hdlm/common.h"

size_t hdlm_tensor_numel(const hdlm_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

static size_t row_elems(const hdlm_tensor *t) { return t->ndim > 1 ? hdlm_tensor_numel(t) / (size_t)t->shape[0] : 1; }

void hdlm_partition_rows(const hdlm_tensor *tensors, int n_tensors, int world, size_t *starts) {
    size_t begin = n_tensors ? tensors[0].offset : 0;
    size_t end = n_tensors ? tensors[n_tensors - 1].offset + hdlm_tensor_numel(&tensors[n_tensors - 1]) : 0;
    starts[0] = begin;
    int t = 0;
    for (int r = 1; r < world; r++) {
        size_t target = begin + (end - begin) * (size_t)r / (size_t)world;
        while (t < n_tensors - 1 && tensors[t].offset + hdlm_tensor_numel(&tensors[t]) <= target) t++;
        size_t row = row_elems(&tensors[t]);
        size_t snapped = tensors[t].offset + (target - tensors[t].offset) / row * row;   // round down to a row
        starts[r] = snapped > starts[r - 1] ? snapped : starts[r - 1];
    }
    starts[world] = end;
}

// ---------------------------------------------------------------------------------------------------------------
// Files and directories

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    HDLM_CHECK(fd >= 0, "cannot open %s to flush it: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    HDLM_CHECK(rc == 0 || errno == EINVAL, "cannot flush %s to disk: %s", path, strerror(errno));
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int remove_tree(const char *path) {
    if (access(path, F_OK) != 0) return 0;
    HDLM_CHECK(nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

// Replaces `path` with `text` atomically.
static int write_text_atomic(const char *path, const char *text) {
    hdlm_atomic_file out;
    HDLM_TRY(hdlm_atomic_open(&out, path));
    hdlm_atomic_write(&out, text, strlen(text));
    return hdlm_atomic_commit(&out);
}

static bool is_step_name(const char *name, int64_t *step) {
    char *end;
    if (strncmp(name, "step_", 5) != 0) return false;
    long long s = strtoll(name + 5, &end, 10);
    if (end == name + 5 || *end != '\0') return false;
    *step = s;
    return true;
}

static int compare_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

// Steps of the checkpoint directories under root that carry a COMPLETE marker, newest first (malloc'ed).
static int list_complete(const char *root, int64_t **steps) {
    *steps = NULL;
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0, cap = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int64_t step;
        char marker[4400 + 256];
        snprintf(marker, sizeof marker, "%s/%s/COMPLETE", root, e->d_name);
        if (!is_step_name(e->d_name, &step) || access(marker, F_OK) != 0) continue;
        if (n == cap) *steps = hdlm_realloc(*steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof **steps);
        (*steps)[n++] = step;
    }
    closedir(d);
    if (n > 1) qsort(*steps, (size_t)n, sizeof **steps, compare_desc);   // (*steps is NULL when n = 0)
    return n;
}

static void step_dir(char *out, size_t n, const char *root, int64_t step) {
    snprintf(out, n, "%s/step_%09" PRId64, root, step);
}

// ---------------------------------------------------------------------------------------------------------------
// MPI: every collective step degrades to a no-op without MPI.

static bool mpi_running(void) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

// All ranks learn whether any rank failed; the lowest failing rank's message becomes everybody's error.
static int agree(int rc) {
    if (!mpi_running() || hdlm_world_size() == 1) return rc;
    int mine = rc != 0 ? hdlm_rank() : hdlm_world_size(), first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == hdlm_world_size()) return 0;
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", hdlm_last_error());
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD);
    return hdlm_fail(__FILE__, __LINE__, "checkpoint failed on rank %d: %s", first, msg);
}

static void barrier(void) {
    if (mpi_running()) MPI_Barrier(MPI_COMM_WORLD);
}

// ---------------------------------------------------------------------------------------------------------------
// HDF5 helpers (errors are reported by our messages; the library's own stack printing is switched off)

static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static int h5_attr_i64(hid_t obj, const char *name, int64_t value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, H5T_NATIVE_INT64, &value) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    HDLM_CHECK(rc >= 0, "cannot write HDF5 attribute '%s'", name);
    return 0;
}

static int h5_read_attr_i64(hid_t obj, const char *name, int64_t *value, const char *file) {
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    HDLM_CHECK(a >= 0, "%s: missing attribute '%s'", file, name);
    herr_t rc = H5Aread(a, H5T_NATIVE_INT64, value);
    H5Aclose(a);
    HDLM_CHECK(rc >= 0, "%s: cannot read attribute '%s'", file, name);
    return 0;
}

static hid_t h5_string_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static int h5_write_strings(hid_t loc, const char *name, const char *const *strings, hsize_t n) {
    hid_t type = h5_string_type();
    hid_t space = n ? H5Screate_simple(1, &n, NULL) : H5Screate(H5S_NULL);
    hid_t d = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = d >= 0 && n ? H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, strings) : (d >= 0 ? 0 : -1);
    if (d >= 0) H5Dclose(d);
    H5Sclose(space);
    H5Tclose(type);
    HDLM_CHECK(rc >= 0, "cannot write HDF5 dataset '%s'", name);
    return 0;
}

static int h5_write_i64(hid_t loc, const char *name, int rank, const hsize_t *dims, const int64_t *data) {
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = d >= 0 ? H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : -1;
    if (d >= 0) H5Dclose(d);
    H5Sclose(space);
    HDLM_CHECK(rc >= 0, "cannot write HDF5 dataset '%s'", name);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Save

// Rows [r0, r1) of tensor t that fall in the flat slice [lo, hi) (row-aligned by hdlm_partition_rows).
static bool tensor_rows_in(const hdlm_tensor *t, size_t lo, size_t hi, int64_t *r0, int64_t *r1) {
    size_t begin = t->offset, end = t->offset + hdlm_tensor_numel(t), row = row_elems(t);
    if (end <= lo || begin >= hi) return false;
    *r0 = (int64_t)(((lo > begin ? lo : begin) - begin) / row);
    *r1 = (int64_t)(((hi < end ? hi : end) - begin) / row);
    return *r1 > *r0;
}

static void shard_name(char *out, size_t n, int rank, int world) {
    snprintf(out, n, "shard_%05d-of-%05d.h5", rank, world);
}

// This rank's shard: /<group>/<tensor> = its rows of every tensor it owns. crc[g * T + t] gets the CRC-32 of the
// rows written (crc32(0) when none).
static int write_shard(const char *path, const hdlm_ckpt_contents *c, size_t lo, size_t hi, int rank, int world,
                       uint32_t *crc) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    HDLM_CHECK(f >= 0, "cannot create checkpoint shard %s: %s", path, strerror(errno));
    int rc = h5_attr_i64(f, "rank", rank) || h5_attr_i64(f, "world_size", world) ||
             h5_attr_i64(f, "flat_offset", (int64_t)lo) || h5_attr_i64(f, "flat_count", (int64_t)(hi - lo)) ? -1 : 0;
    for (int g = 0; rc == 0 && g < c->n_groups; g++) {
        const hdlm_ckpt_group *grp = &c->groups[g];
        hid_t gid = H5Gcreate2(f, grp->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (gid < 0) {
            rc = HDLM_FAIL("cannot create group '%s' in %s", grp->name, path);
            break;
        }
        for (int t = 0; rc == 0 && t < c->n_tensors; t++) {
            const hdlm_tensor *td = &c->tensors[t];
            int64_t r0, r1;
            crc[g * c->n_tensors + t] = (uint32_t)crc32(0L, Z_NULL, 0);
            if (!tensor_rows_in(td, lo, hi, &r0, &r1)) continue;
            hsize_t dims[4];
            for (int d = 0; d < td->ndim; d++) dims[d] = (hsize_t)td->shape[d];
            dims[0] = (hsize_t)(r1 - r0);
            const float *src = grp->data + (td->offset + (size_t)r0 * row_elems(td) - grp->data_offset);
            size_t count = (size_t)(r1 - r0) * row_elems(td), bytes = count * sizeof(float);
            size_t bad = hdlm_first_nonfinite(src, count);
            if (bad < count) {
                rc = HDLM_FAIL("refusing to checkpoint %s/%s: element %zu of this rank's rows is %g; a checkpoint "
                               "never holds non-finite state (the run diverged: resume from an earlier checkpoint)",
                               grp->name, td->name, bad, (double)src[bad]);
                break;
            }
            crc[g * c->n_tensors + t] = (uint32_t)crc32_z(crc32(0L, Z_NULL, 0), (const Bytef *)src, bytes);
            hid_t space = H5Screate_simple(td->ndim, dims, NULL);
            hid_t d = H5Dcreate2(gid, td->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, src) < 0)
                rc = HDLM_FAIL("cannot write %s/%s to %s (disk full?)", grp->name, td->name, path);
            if (d >= 0) H5Dclose(d);
            H5Sclose(space);
        }
        H5Gclose(gid);
    }
    if (H5Fclose(f) < 0 && rc == 0) rc = HDLM_FAIL("cannot close checkpoint shard %s (disk full?)", path);
    if (rc == 0) rc = fsync_path(path);
    return rc;
}

// index.h5: metadata, the tensor table, the shard list and one virtual dataset per (group, tensor).
static int write_index(const char *dir, const hdlm_ckpt_contents *c, const size_t *starts, int world,
                       const uint32_t *crc_all, const int64_t *rank_state_all, int64_t step) {
    char path[4400];
    snprintf(path, sizeof path, "%s/index.h5", dir);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);   // large attributes/config allowed
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    HDLM_CHECK(f >= 0, "cannot create %s", path);
    const int T = c->n_tensors;
    int rc = h5_attr_i64(f, "schema_version", HDLM_CHECKPOINT_SCHEMA) || h5_attr_i64(f, "world_size", world) ||
             h5_attr_i64(f, "step", step) || h5_attr_i64(f, "num_elements", (int64_t)starts[world])
                 ? -1 : 0;

    // Metadata: configuration text, scalars as attributes of /scalars, per-rank state [world, len].
    const char *config = c->config_yaml ? c->config_yaml : "";
    if (rc == 0) rc = h5_write_strings(f, "config_yaml", &config, 1);
    hid_t sg = H5Gcreate2(f, "scalars", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    for (int i = 0; rc == 0 && i < c->n_scalars; i++) rc = h5_attr_i64(sg, c->scalars[i].key, c->scalars[i].value);
    H5Gclose(sg);
    if (rc == 0 && c->rank_state_len > 0) {
        hsize_t dims[2] = {(hsize_t)world, (hsize_t)c->rank_state_len};
        rc = h5_write_i64(f, "rank_state", 2, dims, rank_state_all);
    }

    // Tensor table and shard list.
    hid_t tg = H5Gcreate2(f, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char **names = hdlm_malloc((size_t)(T ? T : 1) * sizeof *names);
    int64_t *shapes = hdlm_calloc((size_t)(T ? T : 1) * 5, sizeof *shapes), *offsets = shapes + 4 * (size_t)T;
    for (int t = 0; t < T; t++) {
        names[t] = c->tensors[t].name;
        for (int d = 0; d < c->tensors[t].ndim; d++) shapes[4 * t + d] = c->tensors[t].shape[d];
        offsets[t] = (int64_t)c->tensors[t].offset;
    }
    hsize_t tdims[2] = {(hsize_t)T, 4};
    if (rc == 0) rc = h5_write_strings(tg, "name", names, (hsize_t)T);
    if (rc == 0 && T) rc = h5_write_i64(tg, "shape", 2, tdims, shapes);
    if (rc == 0 && T) rc = h5_write_i64(tg, "offset", 1, tdims, offsets);
    H5Gclose(tg);
    free(names);
    free(shapes);

    hid_t shg = H5Gcreate2(f, "shards", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    char(*files)[64] = hdlm_malloc((size_t)world * sizeof *files);
    const char **file_ptrs = hdlm_malloc((size_t)world * sizeof *file_ptrs);
    int64_t *sizes = hdlm_malloc((size_t)world * 2 * sizeof *sizes), *flat = sizes + world;
    for (int r = 0; rc == 0 && r < world; r++) {
        shard_name(files[r], sizeof files[r], r, world);
        file_ptrs[r] = files[r];
        char shard_path[4500];
        snprintf(shard_path, sizeof shard_path, "%s/%s", dir, files[r]);
        struct stat st;
        if (stat(shard_path, &st) != 0) rc = HDLM_FAIL("shard %s is missing after writing", shard_path);
        sizes[r] = (int64_t)st.st_size;
        flat[r] = (int64_t)starts[r];
    }
    hsize_t wdims[1] = {(hsize_t)world};
    if (rc == 0) rc = h5_write_strings(shg, "file", file_ptrs, (hsize_t)world);
    if (rc == 0) rc = h5_write_i64(shg, "nbytes", 1, wdims, sizes);
    if (rc == 0) rc = h5_write_i64(shg, "flat_offset", 1, wdims, flat);
    H5Gclose(shg);
    free(files), free(file_ptrs), free(sizes);

    // One virtual dataset per (group, tensor), stitched from the shards' rows, with the whole tensor's CRC-32.
    for (int g = 0; rc == 0 && g < c->n_groups; g++) {
        hid_t gid = H5Gcreate2(f, c->groups[g].name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        for (int t = 0; rc == 0 && t < T; t++) {
            const hdlm_tensor *td = &c->tensors[t];
            hsize_t dims[4], start[4] = {0}, count[4];
            for (int d = 0; d < td->ndim; d++) dims[d] = count[d] = (hsize_t)td->shape[d];
            hid_t vspace = H5Screate_simple(td->ndim, dims, NULL);
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            uLong crc = crc32(0L, Z_NULL, 0);
            for (int r = 0; r < world; r++) {
                int64_t r0, r1;
                if (!tensor_rows_in(td, starts[r], starts[r + 1], &r0, &r1)) continue;
                start[0] = (hsize_t)r0;
                count[0] = (hsize_t)(r1 - r0);
                H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start, NULL, count, NULL);
                hid_t sspace = H5Screate_simple(td->ndim, count, NULL);
                char file[64], src[512];
                shard_name(file, sizeof file, r, world);
                snprintf(src, sizeof src, "/%s/%s", c->groups[g].name, td->name);
                if (H5Pset_virtual(dcpl, vspace, file, src, sspace) < 0) rc = HDLM_FAIL("cannot map %s", src);
                H5Sclose(sspace);
                size_t bytes = (size_t)(r1 - r0) * row_elems(td) * sizeof(float);
                crc = crc32_combine(crc, crc_all[((size_t)r * c->n_groups + g) * T + t], (z_off_t)bytes);
            }
            H5Sselect_all(vspace);
            hid_t d = H5Dcreate2(gid, td->name, H5T_IEEE_F32LE, vspace, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            if (d < 0) rc = HDLM_FAIL("cannot create virtual dataset %s/%s in %s", c->groups[g].name, td->name, path);
            else rc = h5_attr_i64(d, "crc32", (int64_t)crc), H5Dclose(d);
            H5Pclose(dcpl);
            H5Sclose(vspace);
        }
        H5Gclose(gid);
    }
    if (H5Fclose(f) < 0 && rc == 0) rc = HDLM_FAIL("cannot close %s (disk full?)", path);
    if (rc == 0) rc = fsync_path(path);
    return rc;
}

// Removes step_N.tmp / step_N.old directories that writers killed at other steps left behind (after a successful
// publish, none of them can be in use: one run writes a root).
static void remove_stale(const char *root) {
    DIR *d = opendir(root);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step_", 5) != 0 || len < 9 ||
            (strcmp(e->d_name + len - 4, ".tmp") != 0 && strcmp(e->d_name + len - 4, ".old") != 0))
            continue;
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
        if (remove_tree(dir) != 0) hdlm_warn("%s\n", hdlm_last_error());
    }
    closedir(d);
}

// Keeps the newest keep_last complete checkpoints and those whose step is a multiple of keep_every.
static void apply_retention(const char *root, const hdlm_ckpt_retention *keep) {
    remove_stale(root);
    int64_t *steps;
    int n = list_complete(root, &steps);
    for (int i = keep->keep_last; i < n; i++) {
        if (keep->keep_every > 0 && steps[i] % keep->keep_every == 0) continue;
        char dir[4200];
        step_dir(dir, sizeof dir, root, steps[i]);
        if (remove_tree(dir) != 0) hdlm_warn("%s\n", hdlm_last_error());
    }
    free(steps);
}

// xxHash64 of a whole (small) file: the index's fingerprint in the COMPLETE marker.
static int file_xxh64(const char *path, uint64_t *hash) {
    char *data;
    size_t len;
    HDLM_TRY(hdlm_read_file(path, &data, &len));
    *hash = XXH64(data, len, 0);
    free(data);
    return 0;
}

// Rank 0: publish tmp as final (moving an older copy of the same step aside first), mark it complete, point latest at it.
static int publish(const char *root, const char *tmp, const char *final, int64_t step) {
    char old[4300], marker[4300], latest[4300], name[64];
    snprintf(old, sizeof old, "%s.old", final);
    HDLM_TRY(fsync_path(tmp));
    HDLM_TRY(remove_tree(old));
    if (access(final, F_OK) == 0)
        HDLM_CHECK(rename(final, old) == 0, "cannot move %s aside: %s", final, strerror(errno));
    HDLM_CHECK(rename(tmp, final) == 0, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
    // COMPLETE records the index's checksum: a damaged index is refused before the HDF5 library parses it.
    char index[4300], complete[128];
    uint64_t hash;
    snprintf(index, sizeof index, "%s/index.h5", final);
    HDLM_TRY(file_xxh64(index, &hash));
    snprintf(marker, sizeof marker, "%s/COMPLETE", final);
    snprintf(name, sizeof name, "step_%09" PRId64 "\n", step);
    snprintf(complete, sizeof complete, "%sindex_xxh64 %016" PRIx64 "\n", name, hash);
    HDLM_TRY(write_text_atomic(marker, complete));
    HDLM_TRY(fsync_path(final));
    snprintf(latest, sizeof latest, "%s/latest", root);
    HDLM_TRY(write_text_atomic(latest, name));
    HDLM_TRY(fsync_path(root));
    return remove_tree(old);
}

int hdlm_checkpoint_save(const char *root, int64_t step, const hdlm_ckpt_contents *c, const hdlm_ckpt_retention *keep,
                         double *seconds) {
    double t0 = hdlm_time_now();
    h5_quiet();
    const int world = hdlm_world_size(), rank = hdlm_rank();
    char final[4200], tmp[4300], path[4500], file[64];
    step_dir(final, sizeof final, root, step);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);

    // Rank 0 prepares a clean temporary directory (a stale one is what a killed writer leaves behind).
    int rc = 0;
    if (rank == 0)
        rc = hdlm_make_dirs(root, "checkpoint root") || remove_tree(tmp) || hdlm_make_dirs(tmp, "checkpoint") ? -1 : 0;
    HDLM_TRY(agree(rc));

    size_t *starts = hdlm_malloc((size_t)(world + 1) * sizeof *starts);
    hdlm_partition_rows(c->tensors, c->n_tensors, world, starts);
    const size_t per_rank = (size_t)c->n_groups * (size_t)c->n_tensors;
    uint32_t *crc = hdlm_calloc(per_rank ? per_rank : 1, sizeof *crc);
    shard_name(file, sizeof file, rank, world);
    snprintf(path, sizeof path, "%s/%s", tmp, file);
    rc = write_shard(path, c, starts[rank], starts[rank + 1], rank, world, crc);
    rc = agree(rc);

    // Rank 0 gathers the pieces' checksums and the per-rank states, then writes the index and publishes.
    uint32_t *crc_all = rank == 0 ? hdlm_calloc(per_rank * (size_t)world + 1, sizeof *crc_all) : NULL;
    size_t state_len = (size_t)c->rank_state_len;
    int64_t *state_all = rank == 0 ? hdlm_calloc(state_len * (size_t)world + 1, sizeof *state_all) : NULL;
    if (rc == 0 && world > 1) {
        MPI_Gather(crc, (int)per_rank, MPI_UINT32_T, crc_all, (int)per_rank, MPI_UINT32_T, 0, MPI_COMM_WORLD);
        MPI_Gather(c->rank_state, (int)state_len, MPI_INT64_T, state_all, (int)state_len, MPI_INT64_T, 0,
                   MPI_COMM_WORLD);
    } else if (rc == 0) {
        memcpy(crc_all, crc, per_rank * sizeof *crc);
        if (state_len) memcpy(state_all, c->rank_state, state_len * sizeof *state_all);
    }
    if (rc == 0) {
        int rc0 = 0;
        if (rank == 0) {
            rc0 = write_index(tmp, c, starts, world, crc_all, state_all, step);
            if (rc0 == 0) rc0 = publish(root, tmp, final, step);
            if (rc0 == 0) apply_retention(root, keep);
        }
        rc = agree(rc0);
    }
    free(starts), free(crc), free(crc_all), free(state_all);
    barrier();
    if (seconds) *seconds = hdlm_time_now() - t0;
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Read

struct hdlm_ckpt {
    char dir[4096];
    hid_t file;
    int world;
    int n_tensors;
    char **names;
    int64_t *shapes, *offsets;   // [T, 4], [T]
};

static int read_i64_dataset(hid_t f, const char *name, int64_t *out, hsize_t expect, const char *file) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    HDLM_CHECK(d >= 0, "%s: missing dataset '%s'", file, name);
    hid_t space = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    herr_t rc = (hsize_t)n == expect ? H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) : -1;
    H5Dclose(d);
    HDLM_CHECK(rc >= 0, "%s: dataset '%s' has %lld values, expected %llu", file, name, (long long)n,
               (unsigned long long)expect);
    return 0;
}

// HDF5 1.10 loops forever on a global heap collection holding a free-space object of size 0 (its parser makes no
// progress), and a variable-length string read parses the collections its strings point into. So before such a
// read, the collections of dataset d's n strings are walked here as HDF5 will walk them (file format: descriptors of
// 16 bytes — length, collection address, object index — in the contiguous raw data; a collection "GCOL", version,
// size, then objects of index, references, size and data padded to 8 bytes), and any that would not advance is refused.
static int check_string_heaps(hid_t f, hid_t d, hsize_t n, const char *name, const char *file) {
    hid_t dcpl = H5Dget_create_plist(d), fcpl = H5Fget_create_plist(f);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    size_t sizeof_addr = 0, sizeof_size = 0;
    H5Pget_sizes(fcpl, &sizeof_addr, &sizeof_size);
    H5Pclose(dcpl);
    H5Pclose(fcpl);
    haddr_t offset = H5Dget_offset(d);
    HDLM_CHECK(layout == H5D_CONTIGUOUS && sizeof_addr == 8 && sizeof_size == 8 && offset != HADDR_UNDEF &&
                   H5Dget_storage_size(d) == n * 16,
               "%s: dataset '%s' is not laid out as hdlm writes it (corrupt index)", file, name);
    char path[4096];
    HDLM_CHECK(H5Fget_name(f, path, sizeof path) > 0, "%s: cannot name the HDF5 file", file);
    FILE *in = fopen(path, "rb");
    HDLM_CHECK(in, "%s: %s", path, strerror(errno));
    int status = 0;
    uint8_t *desc = hdlm_malloc(n * 16), *heap = NULL;
    struct stat st;
    if (fstat(fileno(in), &st) != 0 || fseeko(in, (off_t)offset, SEEK_SET) != 0 || fread(desc, 16, n, in) != n)
        status = HDLM_FAIL("%s: dataset '%s' lies outside the file (corrupt index)", file, name);
    uint64_t last = UINT64_MAX;   // consecutive strings share a collection: walk each one once
    for (hsize_t i = 0; i < n && status == 0; i++) {
        uint64_t addr = hdlm_load_le(desc + 16 * i + 4, 8);
        if (addr == last || (desc[16 * i] | desc[16 * i + 1] | desc[16 * i + 2] | desc[16 * i + 3]) == 0) continue;
        last = addr;
        uint8_t hdr[16];
        uint64_t size = 0;
        if (addr > (uint64_t)st.st_size - 16 || fseeko(in, (off_t)addr, SEEK_SET) != 0 || fread(hdr, 16, 1, in) != 1 ||
            memcmp(hdr, "GCOL", 4) != 0 || (size = hdlm_load_le(hdr + 8, 8)) < 16 || size > (uint64_t)st.st_size - addr) {
            status = HDLM_FAIL("%s: string %llu of dataset '%s' points outside a string heap (corrupt index)", file,
                               (unsigned long long)i, name);
            break;
        }
        heap = hdlm_realloc(heap, size);
        if (fseeko(in, (off_t)addr, SEEK_SET) != 0 || fread(heap, 1, size, in) != size) {
            status = HDLM_FAIL("%s: cannot read the string heap of dataset '%s'", file, name);
            break;
        }
        for (uint64_t p = 16; p + 16 <= size;) {   // a tail shorter than an object header is free space
            unsigned idx = (unsigned)hdlm_load_le(heap + p, 2);
            uint64_t osize = hdlm_load_le(heap + p + 8, 8), need = idx > 0 ? 16 + ((osize + 7) & ~(uint64_t)7) : osize;
            if (need == 0 || (idx > 0 && osize > size)) {
                status = HDLM_FAIL("%s: the string heap of dataset '%s' is corrupt (object %u of size %llu)", file,
                                   name, idx, (unsigned long long)osize);
                break;
            }
            if (need >= size - p) break;
            p += need;
        }
    }
    free(heap);
    free(desc);
    fclose(in);
    return status;
}

// Reads a 1-D variable-length string dataset of n entries (each malloc'ed).
static int read_strings(hid_t f, const char *name, char **out, hsize_t n, const char *file) {
    if (n == 0) return 0;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    HDLM_CHECK(d >= 0, "%s: missing dataset '%s'", file, name);
    hid_t space = H5Dget_space(d);
    hssize_t count = H5Sget_simple_extent_npoints(space);
    if ((hsize_t)count != n || check_string_heaps(f, d, n, name, file) != 0) {
        H5Sclose(space);
        H5Dclose(d);
        HDLM_CHECK((hsize_t)count == n, "%s: cannot read dataset '%s' (%llu strings expected)", file, name,
                   (unsigned long long)n);
        return -1;
    }
    hid_t type = h5_string_type();
    char **tmp = hdlm_calloc(n, sizeof *tmp);
    herr_t rc = H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp);
    if (rc >= 0) {
        for (hsize_t i = 0; i < n; i++) out[i] = hdlm_strdup(tmp[i] ? tmp[i] : "");
        H5Dvlen_reclaim(type, space, H5P_DEFAULT, tmp);
    }
    free(tmp);
    H5Sclose(space);
    H5Tclose(type);
    H5Dclose(d);
    HDLM_CHECK(rc >= 0, "%s: cannot read dataset '%s' (%llu strings expected)", file, name, (unsigned long long)n);
    return 0;
}

void hdlm_checkpoint_close(hdlm_ckpt *ck) {
    if (!ck) return;
    if (ck->file >= 0) H5Fclose(ck->file);
    for (int t = 0; t < ck->n_tensors && ck->names; t++) free(ck->names[t]);
    free(ck->names), free(ck->shapes), free(ck->offsets);
    free(ck);
}

static int open_index(hdlm_ckpt *ck) {
    char marker[4200], path[4200];
    snprintf(marker, sizeof marker, "%s/COMPLETE", ck->dir);
    HDLM_CHECK(access(ck->dir, F_OK) == 0, "checkpoint %s does not exist", ck->dir);
    HDLM_CHECK(access(marker, F_OK) == 0, "checkpoint %s is incomplete: no COMPLETE marker (the writer stopped early)",
               ck->dir);
    snprintf(path, sizeof path, "%s/index.h5", ck->dir);
    // The index's checksum, when the marker records one (checkpoints before it was recorded do not).
    char *text;
    size_t len;
    unsigned long long want;
    HDLM_TRY(hdlm_read_file(marker, &text, &len));
    const char *line = strstr(text, "index_xxh64 ");
    bool recorded = line && sscanf(line, "index_xxh64 %llx", &want) == 1;
    free(text);
    if (recorded) {
        uint64_t have;
        HDLM_TRY(file_xxh64(path, &have));
        HDLM_CHECK(have == want, "checkpoint %s: index.h5 has checksum %016" PRIx64 ", its COMPLETE marker records "
                   "%016llx: the index was damaged after it was written", ck->dir, have, want);
    }
    // Strong close: also closes what a failed virtual-dataset read left open in the shards.
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    if (hdlm_check_regular(path, "checkpoint index") != 0) {
        H5Pclose(fapl);
        return -1;
    }
    ck->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    HDLM_CHECK(ck->file >= 0, "%s: not a readable HDF5 file (corrupt or truncated)", path);
    int64_t schema, world, T = 0;
    HDLM_TRY(h5_read_attr_i64(ck->file, "schema_version", &schema, path));
    HDLM_CHECK(schema == HDLM_CHECKPOINT_SCHEMA, "%s: checkpoint schema version %lld, this hdlm reads version %d", path,
               (long long)schema, HDLM_CHECKPOINT_SCHEMA);
    HDLM_TRY(h5_read_attr_i64(ck->file, "world_size", &world, path));
    HDLM_CHECK(world >= 1 && world <= 1 << 20, "%s: invalid world_size %lld", path, (long long)world);
    ck->world = (int)world;

    // Every shard must exist with the size recorded at write time: a missing source makes HDF5's virtual datasets
    // return zeros silently.
    char **files = hdlm_calloc((size_t)world, sizeof *files);
    int64_t *nbytes = hdlm_malloc((size_t)world * sizeof *nbytes);
    int rc = read_strings(ck->file, "shards/file", files, (hsize_t)world, path);
    if (rc == 0) rc = read_i64_dataset(ck->file, "shards/nbytes", nbytes, (hsize_t)world, path);
    for (int r = 0; rc == 0 && r < world; r++) {
        char shard[4400];
        struct stat st;
        snprintf(shard, sizeof shard, "%s/%s", ck->dir, files[r]);
        if (stat(shard, &st) != 0) rc = HDLM_FAIL("checkpoint shard %s is missing", shard);
        else if ((int64_t)st.st_size != nbytes[r])
            rc = HDLM_FAIL("checkpoint shard %s has %lld bytes, %lld were written (truncated or replaced)", shard,
                           (long long)st.st_size, (long long)nbytes[r]);
    }
    for (int r = 0; r < world; r++) free(files[r]);
    free(files), free(nbytes);
    HDLM_TRY(rc);

    hid_t d = H5Dopen2(ck->file, "tensors/name", H5P_DEFAULT);
    HDLM_CHECK(d >= 0, "%s: missing tensor table", path);
    hid_t space = H5Dget_space(d);
    T = H5Sget_simple_extent_type(space) == H5S_NULL ? 0 : H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    H5Dclose(d);
    ck->n_tensors = (int)T;
    ck->names = hdlm_calloc((size_t)T + 1, sizeof *ck->names);
    ck->shapes = hdlm_calloc((size_t)T * 4 + 1, sizeof *ck->shapes);
    ck->offsets = hdlm_calloc((size_t)T + 1, sizeof *ck->offsets);
    HDLM_TRY(read_strings(ck->file, "tensors/name", ck->names, (hsize_t)T, path));
    if (T) HDLM_TRY(read_i64_dataset(ck->file, "tensors/shape", ck->shapes, (hsize_t)T * 4, path));
    if (T) HDLM_TRY(read_i64_dataset(ck->file, "tensors/offset", ck->offsets, (hsize_t)T, path));
    return 0;
}

int hdlm_checkpoint_open(hdlm_ckpt **out, const char *dir) {
    h5_quiet();
    *out = NULL;
    hdlm_ckpt *ck = hdlm_calloc(1, sizeof *ck);
    ck->file = -1;
    HDLM_CHECK(strlen(dir) < sizeof ck->dir, "checkpoint path too long: %s", dir);
    strcpy(ck->dir, dir);
    if (open_index(ck) != 0) {
        hdlm_checkpoint_close(ck);
        return -1;
    }
    *out = ck;
    return 0;
}

int hdlm_checkpoint_find_latest(const char *root, char *path, size_t path_size) {
    char latest[4200], name[256] = "";
    snprintf(latest, sizeof latest, "%s/latest", root);
    FILE *f = NULL;
    if (access(latest, F_OK) == 0 && hdlm_fopen_regular(latest, "checkpoint pointer", &f) != 0)
        hdlm_warn("%s\n", hdlm_last_error());
    if (f) {
        if (!fgets(name, sizeof name, f)) name[0] = '\0';
        fclose(f);
        name[strcspn(name, "\n")] = '\0';
    }
    // `latest` may only name a step directory of this root (never a path that leads elsewhere).
    unsigned long long named_step;
    int consumed = 0;
    if (name[0] && !(sscanf(name, "step_%9llu%n", &named_step, &consumed) == 1 && consumed == 14 && !name[14])) {
        char shown[64];
        size_t k = 0;
        for (const char *c = name; *c && k + 4 < sizeof shown; c++)
            k += (size_t)snprintf(shown + k, sizeof shown - k, (*c >= 32 && *c < 127) ? "%c" : "\\x%02x",
                                  (unsigned char)*c);
        hdlm_warn("%s names '%s', not a step_NNNNNNNNN directory: ignored\n", latest, shown);
        name[0] = '\0';
    }
    // Candidates: what latest names, then every complete checkpoint, newest first.
    int64_t *steps;
    int n = list_complete(root, &steps);
    for (int i = -1; i < n; i++) {
        char dir[4400];
        if (i < 0) {
            if (!name[0]) continue;
            snprintf(dir, sizeof dir, "%s/%s", root, name);
        } else {
            step_dir(dir, sizeof dir, root, steps[i]);
        }
        hdlm_ckpt *ck;
        if (hdlm_checkpoint_open(&ck, dir) == 0) {
            hdlm_checkpoint_close(ck);
            free(steps);
            HDLM_CHECK(strlen(dir) < path_size, "checkpoint path too long: %s", dir);
            strcpy(path, dir);
            return 0;
        }
        hdlm_warn("skipping checkpoint %s: %s\n", dir, hdlm_last_error());
    }
    free(steps);
    return HDLM_FAIL("no valid checkpoint under %s", root);
}

// What the step directories under root are, for the message of a failed resolve: "step_000000100 (no COMPLETE
// marker: the writer stopped early), ..." or "no step_NNNNNNNNN directory".
static void describe_steps(const char *root, char *out, size_t size) {
    DIR *d = opendir(root);
    size_t k = 0;
    int shown = 0, total = 0;
    out[0] = '\0';
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strncmp(e->d_name, "step_", 5) != 0) continue;
        total++;
        if (shown == 4 || k + 128 >= size) continue;
        char marker[4400 + 256];
        snprintf(marker, sizeof marker, "%s/%s/COMPLETE", root, e->d_name);
        k += (size_t)snprintf(out + k, size - k, "%s%s (%s)", shown ? ", " : "", e->d_name,
                              access(marker, F_OK) == 0 ? "complete, but refused: see the warning above"
                                                        : "no COMPLETE marker: the writer stopped early");
        shown++;
    }
    if (d) closedir(d);
    if (total == 0) snprintf(out, size, "no step_NNNNNNNNN directory");
    else if (total > shown && k + 32 < size) snprintf(out + k, size - k, " and %d more", total - shown);
}

int hdlm_checkpoint_resolve(const char *what, char *path, size_t path_size) {
    struct stat st;
    HDLM_CHECK(stat(what, &st) == 0 && S_ISDIR(st.st_mode),
               "%s: no such directory (expected a run directory, a checkpoint root or a checkpoint)", what);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/index.h5", what);
    if (access(probe, F_OK) == 0) {   // a checkpoint itself
        HDLM_CHECK(strlen(what) < path_size, "checkpoint path too long: %s", what);
        strcpy(path, what);
        return 0;
    }
    snprintf(probe, sizeof probe, "%s/checkpoints", what);
    const char *root = stat(probe, &st) == 0 && S_ISDIR(st.st_mode) ? probe : what;   // a run directory's root
    if (hdlm_checkpoint_find_latest(root, path, path_size) == 0) return 0;
    char found[1024];
    describe_steps(root, found, sizeof found);
    return HDLM_FAIL("no complete checkpoint in %s (looked in %s, for a checkpoint, a checkpoint root or a run "
                     "directory): found %s", what, root, found);
}

const char *hdlm_checkpoint_path(const hdlm_ckpt *ck) { return ck->dir; }
int hdlm_checkpoint_world_size(const hdlm_ckpt *ck) { return ck->world; }

// "[10, 4]" from a 0-padded shape.
static void format_shape(char *out, size_t n, const int64_t *shape) {
    int len = snprintf(out, n, "[");
    for (int d = 0; d < 4 && shape[d] > 0; d++)
        len += snprintf(out + len, n - (size_t)len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    snprintf(out + len, n - (size_t)len, "]");
}

static int check_tensor_table(const hdlm_ckpt *ck, const hdlm_tensor *tensors, int n_tensors) {
    HDLM_CHECK(ck->n_tensors == n_tensors, "checkpoint %s holds %d tensors, the model has %d (another model shape?)",
               ck->dir, ck->n_tensors, n_tensors);
    for (int t = 0; t < n_tensors; t++) {
        const hdlm_tensor *td = &tensors[t];
        HDLM_CHECK(strcmp(ck->names[t], td->name) == 0, "checkpoint %s: tensor %d is '%s', the model expects '%s'",
                   ck->dir, t, ck->names[t], td->name);
        int64_t want[4] = {0, 0, 0, 0};
        for (int d = 0; d < td->ndim; d++) want[d] = td->shape[d];
        if (memcmp(want, ck->shapes + 4 * t, sizeof want) != 0) {
            char have_s[96], want_s[96];
            format_shape(have_s, sizeof have_s, ck->shapes + 4 * t);
            format_shape(want_s, sizeof want_s, want);
            return HDLM_FAIL("checkpoint %s: tensor '%s' has shape %s, the model expects %s (another model shape?)",
                             ck->dir, td->name, have_s, want_s);
        }
        HDLM_CHECK(ck->offsets[t] == (int64_t)td->offset, "checkpoint %s: tensor '%s' at flat offset %lld, expected %zu",
                   ck->dir, td->name, (long long)ck->offsets[t], td->offset);
    }
    return 0;
}

int hdlm_checkpoint_read(hdlm_ckpt *ck, const char *group, const hdlm_tensor *tensors, int n_tensors, size_t lo,
                         size_t hi, float *out) {
    HDLM_TRY(check_tensor_table(ck, tensors, n_tensors));
    float *buf = NULL;
    size_t buf_cap = 0;
    int rc = 0;
    for (int t = 0; rc == 0 && t < n_tensors; t++) {
        const hdlm_tensor *td = &tensors[t];
        size_t n = hdlm_tensor_numel(td), begin = td->offset, end = begin + n;
        if (end <= lo || begin >= hi) continue;
        // Whole tensors are read (the checksum covers the whole tensor); the part inside [lo, hi) is kept.
        bool inside = begin >= lo && end <= hi;
        float *dst = inside ? out + (begin - lo) : buf;
        if (!inside && buf_cap < n) dst = buf = hdlm_realloc(buf, (buf_cap = n) * sizeof *buf);
        char name[1024];
        snprintf(name, sizeof name, "%s/%s", group, td->name);
        hid_t d = H5Dopen2(ck->file, name, H5P_DEFAULT);
        if (d < 0) {
            rc = HDLM_FAIL("checkpoint %s has no tensor '%s'", ck->dir, name);
            break;
        }
        int64_t want = -1;
        if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
            rc = HDLM_FAIL("checkpoint %s: cannot read '%s' (corrupt shard?)", ck->dir, name);
        else if (h5_read_attr_i64(d, "crc32", &want, ck->dir) == 0) {
            uLong got = crc32_z(crc32(0L, Z_NULL, 0), (const Bytef *)dst, n * sizeof(float));
            if ((int64_t)got != want)
                rc = HDLM_FAIL("checkpoint %s: tensor '%s' fails its CRC-32 check (corrupt shard)", ck->dir, name);
        } else {
            rc = -1;
        }
        H5Dclose(d);
        size_t bad = rc == 0 ? hdlm_first_nonfinite(dst, n) : n;
        if (bad < n)
            rc = HDLM_FAIL("checkpoint %s: tensor '%s' holds %g at element %zu (non-finite state is never loaded: "
                           "resume from an earlier checkpoint)", ck->dir, name, (double)dst[bad], bad);
        if (rc == 0 && !inside) {
            size_t a = lo > begin ? lo : begin, b = hi < end ? hi : end;
            memcpy(out + (a - lo), buf + (a - begin), (b - a) * sizeof *out);
        }
    }
    free(buf);
    return rc;
}

int hdlm_checkpoint_scalar(hdlm_ckpt *ck, const char *key, int64_t *value) {
    hid_t g = H5Gopen2(ck->file, "scalars", H5P_DEFAULT);
    HDLM_CHECK(g >= 0, "checkpoint %s has no scalars group", ck->dir);
    int rc = h5_read_attr_i64(g, key, value, ck->dir);
    H5Gclose(g);
    return rc;
}

int hdlm_checkpoint_scalar_if(hdlm_ckpt *ck, const char *key, int64_t *value, bool *present) {
    hid_t g = H5Gopen2(ck->file, "scalars", H5P_DEFAULT);
    HDLM_CHECK(g >= 0, "checkpoint %s has no scalars group", ck->dir);
    *present = H5Aexists(g, key) > 0;
    int rc = *present ? h5_read_attr_i64(g, key, value, ck->dir) : 0;
    H5Gclose(g);
    return rc;
}

int hdlm_checkpoint_config(hdlm_ckpt *ck, char **yaml) {
    *yaml = NULL;
    return read_strings(ck->file, "config_yaml", yaml, 1, ck->dir);
}

int hdlm_checkpoint_rank_state(hdlm_ckpt *ck, int *world, int *len, int64_t **state) {
    *world = ck->world;
    *len = 0;
    *state = NULL;
    if (H5Lexists(ck->file, "rank_state", H5P_DEFAULT) <= 0) return 0;
    hid_t d = H5Dopen2(ck->file, "rank_state", H5P_DEFAULT);
    hid_t space = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(space);
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    H5Dclose(d);
    HDLM_CHECK(nd == 2 && dims[0] == (hsize_t)ck->world, "checkpoint %s: rank_state is not [world, len]", ck->dir);
    *len = (int)dims[1];
    *state = hdlm_malloc(dims[0] * dims[1] * sizeof **state + 1);
    return read_i64_dataset(ck->file, "rank_state", *state, dims[0] * dims[1], ck->dir);
}
