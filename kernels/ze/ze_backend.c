/* mxep `ze` backend: Intel GPUs through Level Zero. The probe is real (zeInit,
 * driver and device enumeration); there are no Level Zero kernels yet, so
 * supports() declines every layer and says so. */
#include <level_zero/ze_api.h>
#include <stdio.h>
#include <string.h>

#include "mxep/kernels.h"
#include "mxep/status.h"

extern const mx_backend_ops_t mx_backend_ze;

static mx_status_t ze_probe(mx_device_info_t *info_p)
{
    ze_result_t r = zeInit(ZE_INIT_FLAG_GPU_ONLY);
    if (r != ZE_RESULT_SUCCESS)
        return mx_error_set(MX_ERR_NO_DEVICE, "ze: zeInit failed (0x%x): no Level Zero GPU driver", (unsigned)r);
    uint32_t nd = 0;
    r = zeDriverGet(&nd, NULL);
    if (r != ZE_RESULT_SUCCESS || nd == 0)
        return mx_error_set(MX_ERR_NO_DEVICE, "ze: no Level Zero driver (zeDriverGet 0x%x, %u drivers)", (unsigned)r,
                            nd);
    ze_driver_handle_t drivers[16];
    if (nd > 16)
        nd = 16;
    if (zeDriverGet(&nd, drivers) != ZE_RESULT_SUCCESS)
        return mx_error_set(MX_ERR_NO_DEVICE, "ze: zeDriverGet failed listing %u drivers", nd);
    for (uint32_t i = 0; i < nd; i++) {
        uint32_t ndev = 1;
        ze_device_handle_t dev;
        if (zeDeviceGet(drivers[i], &ndev, &dev) != ZE_RESULT_SUCCESS || ndev == 0)
            continue;
        ze_device_properties_t prop;
        memset(&prop, 0, sizeof prop);
        prop.stype = ZE_STRUCTURE_TYPE_DEVICE_PROPERTIES;
        if (zeDeviceGetProperties(dev, &prop) != ZE_RESULT_SUCCESS || prop.type != ZE_DEVICE_TYPE_GPU)
            continue;
        mx_device_info_t info;
        memset(&info, 0, sizeof info);
        snprintf(info.name, sizeof info.name, "%.120s", prop.name);
        snprintf(info.isa, sizeof info.isa, "ze-0x%x", (unsigned)prop.deviceId);
        info.device_index = 0;
        info.cores = (int)(prop.numSlices * prop.numSubslicesPerSlice * prop.numEUsPerSubslice);
        *info_p = info;
        return MX_OK;
    }
    return mx_error_set(MX_ERR_NO_DEVICE, "ze: %u Level Zero driver(s) but no GPU device", nd);
}

static int ze_supports(const mx_device_info_t *dev, const mx_moe_desc_t *desc, char *reason, size_t reason_len)
{
    (void)dev;
    (void)desc;
    if (reason && reason_len)
        snprintf(reason, reason_len, "no Level Zero kernels yet");
    return 0;
}

static mx_status_t ze_prepack(const mx_device_info_t *dev, const mx_moe_desc_t *desc,
                              const mx_expert_weights_t *experts, int n_experts, mx_backend_packed_t **packed_p)
{
    (void)dev;
    (void)desc;
    (void)experts;
    (void)n_experts;
    (void)packed_p;
    return mx_error_set(MX_ERR_UNSUPPORTED, "ze prepack: no Level Zero kernels yet");
}

static void ze_release(mx_backend_packed_t *packed)
{
    (void)packed;
}

static size_t ze_workspace_size(const mx_backend_packed_t *packed, size_t max_tokens, size_t max_assign)
{
    (void)packed;
    (void)max_tokens;
    (void)max_assign;
    return 0;
}

static mx_status_t ze_run(const mx_backend_packed_t *packed, const mx_run_args_t *args, void *workspace)
{
    (void)packed;
    (void)args;
    (void)workspace;
    return mx_error_set(MX_ERR_UNSUPPORTED, "ze run: no Level Zero kernels yet");
}

const mx_backend_ops_t mx_backend_ze = {
    .name = "ze",
    .priority = 80,
    .probe = ze_probe,
    .supports = ze_supports,
    .prepack = ze_prepack,
    .release = ze_release,
    .workspace_size = ze_workspace_size,
    .run = ze_run,
};
