#include "testutil.h"
#include <math.h>

int fr_test_passed = 0, fr_test_failed = 0;

double fr_rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= maxdiff)) maxdiff = d;   /* NaN propagates */
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref > 1e-30 ? maxref : 1e-30);
}

int fr_test_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, fr_test_passed, fr_test_failed);
    return fr_test_failed == 0 && fr_test_passed > 0 ? 0 : 1;
}
