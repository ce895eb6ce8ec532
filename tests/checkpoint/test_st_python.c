/* Interop with the `safetensors` Python package (MXEP_PYTHON): files mxckpt
 * writes load there with the same names, shapes, dtypes and bytes; files it
 * writes load in mxep. Fails (not skips) when the venv is missing: CI must
 * have it (scripts/setup.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ck_util.h"
#include "mxep/checkpoint.h"

#ifndef MXEP_PYTHON
#error "MXEP_PYTHON must be defined by CMake"
#endif

static char *root;

static int setup(void **state)
{
    (void)state;
    root = ck_tmpdir("pyinterop");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ck_rmtree(root);
    free(root);
    return 0;
}

static void require_python(void)
{
    if (access(MXEP_PYTHON, X_OK) != 0)
        fail_msg("MXEP_PYTHON=%s is missing: create the venv with scripts/setup.sh (numpy, ml_dtypes, safetensors)",
                 MXEP_PYTHON);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import safetensors, numpy' 2>&1", MXEP_PYTHON);
    if (system(cmd) != 0)
        fail_msg("%s cannot import safetensors and numpy: run scripts/setup.sh", MXEP_PYTHON);
}

static int run_script(const char *mode, const char *dir, const char *manifest)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' '%s' %s '%s' '%s'", MXEP_PYTHON, MXEP_ST_INTEROP, mode, dir, manifest);
    return system(cmd);
}

static const char *dtype_name(mx_st_dtype_t d)
{
    return mx_st_dtype_name(d);
}

static void shape_str(const mx_st_tensor_t *t, char *buf, size_t cap)
{
    if (!t->ndim) {
        snprintf(buf, cap, "-");
        return;
    }
    size_t o = 0;
    for (int i = 0; i < t->ndim; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)t->shape[i]);
}

static void test_files_mxckpt_writes_load_in_python_safetensors(void **state)
{
    (void)state;
    require_python();
    const char *presets[2] = {"tiny", "qwen3-moe-fp8"};
    for (int p = 0; p < 2; p++) {
        char tag[64];
        snprintf(tag, sizeof tag, "mx-%s", presets[p]);
        char *d = ck_path(root, tag);
        /* tiny: 2 layers in several shards; qwen3: 2 experts (FP8 + F32 scales) */
        mx_status_t st = p == 0 ? mx_synth_write_ex("tiny", 2, 0, 99, d, 50000, NULL, NULL)
                                : mx_synth_write_ex("qwen3-moe-fp8", 1, 2, 99, d, 0, NULL, NULL);
        if (st)
            fail_msg("write: %s %s", mx_status_str(st), mx_error_detail());
        mx_ckpt_h ck;
        assert_int_equal(mx_ckpt_open(d, &ck), MX_OK);
        if (p == 0)
            assert_true(mx_ckpt_file_count(ck) > 1);
        snprintf(tag, sizeof tag, "mx-%s.manifest", presets[p]);
        char *man = ck_path(root, tag);
        FILE *f = fopen(man, "w");
        for (int i = 0; i < mx_ckpt_tensor_count(ck); i++) {
            mx_st_tensor_t t;
            assert_int_equal(mx_ckpt_tensor_at(ck, i, &t), MX_OK);
            char sh[128];
            shape_str(&t, sh, sizeof sh);
            fprintf(f, "%s %s %s %016llx\n", t.name, dtype_name(t.dtype), sh,
                    (unsigned long long)ck_fnv(t.data, t.nbytes));
        }
        fclose(f);
        mx_ckpt_close(ck);
        if (run_script("check", d, man) != 0)
            fail_msg("python safetensors disagrees with mxep about %s (see stderr)", d);
        free(man);
        free(d);
    }
}

static void test_files_python_safetensors_writes_load_in_mxep(void **state)
{
    (void)state;
    require_python();
    char *d = ck_path(root, "py");
    char *man = ck_path(root, "py.manifest");
    if (run_script("write", d, man) != 0)
        fail_msg("st_interop.py write failed");
    mx_ckpt_h ck;
    mx_status_t st = mx_ckpt_open(d, &ck);
    if (st)
        fail_msg("mxep cannot open the python-written checkpoint: %s %s", mx_status_str(st), mx_error_detail());
    assert_int_equal(mx_ckpt_file_count(ck), 2);
    FILE *f = fopen(man, "r");
    char name[256], dt[32], sh[128];
    unsigned long long h;
    int n = 0;
    while (fscanf(f, "%255s %31s %127s %llx", name, dt, sh, &h) == 4) {
        mx_st_tensor_t t;
        if (mx_ckpt_tensor(ck, name, &t) != MX_OK)
            fail_msg("mxep misses tensor %s: %s", name, mx_error_detail());
        assert_string_equal(dtype_name(t.dtype), dt);
        char mine[128];
        shape_str(&t, mine, sizeof mine);
        assert_string_equal(mine, sh);
        if (ck_fnv(t.data, t.nbytes) != (uint64_t)h)
            fail_msg("tensor %s: bytes differ from what python wrote", name);
        n++;
    }
    fclose(f);
    assert_int_equal(n, 14);
    assert_int_equal(mx_ckpt_tensor_count(ck), 14);
    assert_string_equal(mx_ckpt_layout_name(ck), "gpt_oss_fused");
    /* the experts load, and expert 2's view is its slice of the fused tensors */
    int ids[2] = {2, 0};
    mx_expert_set_h s;
    assert_int_equal(mx_ckpt_load_experts(ck, 0, ids, 2, &s), MX_OK);
    mx_st_tensor_t gb, db;
    assert_int_equal(mx_ckpt_tensor(ck, "model.layers.0.mlp.experts.gate_up_proj_blocks", &gb), MX_OK);
    assert_int_equal(mx_ckpt_tensor(ck, "model.layers.0.mlp.experts.down_proj_blocks", &db), MX_OK);
    assert_memory_equal(mx_expert_set_weights(s)[0].gate_up.data, gb.data + 2 * gb.nbytes / 4, gb.nbytes / 4);
    assert_memory_equal(mx_expert_set_weights(s)[1].down.data, db.data, db.nbytes / 4);
    mx_expert_set_destroy(s);
    mx_router_weights_t r;
    assert_int_equal(mx_ckpt_load_router(ck, 0, &r), MX_OK);
    mx_router_weights_fini(&r);
    mx_ckpt_close(ck);
    free(d);
    free(man);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files_mxckpt_writes_load_in_python_safetensors),
        cmocka_unit_test(test_files_python_safetensors_writes_load_in_mxep),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
