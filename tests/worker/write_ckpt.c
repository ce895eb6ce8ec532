/* Test helper: writes a synthetic checkpoint directory with mx_synth_write_ex.
 * usage: mxw_write_ckpt PRESET N_LAYERS N_EXPERTS(0 = preset's) SEED OUT_DIR */
#include <stdio.h>
#include <stdlib.h>

#include "mxep/checkpoint.h"

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s PRESET N_LAYERS N_EXPERTS SEED OUT_DIR\n", argv[0]);
        return 2;
    }
    mx_status_t st =
        mx_synth_write_ex(argv[1], atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 0), argv[5], 0, NULL, NULL);
    if (st != MX_OK) {
        fprintf(stderr, "mxw_write_ckpt: %s: %s\n", mx_status_str(st), mx_error_detail());
        return 1;
    }
    return 0;
}
