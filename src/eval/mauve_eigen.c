// Symmetric eigen-decomposition for the MAUVE PCA through LAPACKE (reference LAPACK dsyevd). Kept apart from the
// BLIS callers because <lapacke.h> and <blis.h> declare lsame_ differently.
#include <lapacke.h>

#include "hdlm/common.h"
#include "hdlm/mauve.h"

int hdlm_symmetric_eigen(double *a, int64_t d, double *eigenvalues) {
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)d, a, (lapack_int)d, eigenvalues);
    HDLM_CHECK(info == 0, "PCA: LAPACK dsyevd failed (info %d) on a %lld x %lld scatter matrix", (int)info,
               (long long)d, (long long)d);
    return 0;
}
