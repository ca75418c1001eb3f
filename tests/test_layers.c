// The subsystems of src/ depend on each other in one direction and public headers include no private one
// (docs/architecture.md): tests/reference/check_layers.py reads every #include.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "harness.h"

static void test_includes_point_one_way(void **state) {
    (void)state;
    assert_int_equal(test_run("/usr/bin/python3 %s/tests/reference/check_layers.py %s", HDLM_SOURCE_DIR,
                              HDLM_SOURCE_DIR), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_includes_point_one_way)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
