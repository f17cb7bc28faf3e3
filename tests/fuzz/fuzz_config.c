/* libFuzzer target: the config file parser. */
#include "kgc_config.h"

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    kgc_config cfg;
    char err[512];
    FILE *f;

    if (!path[0])
        snprintf(path, sizeof path, "/tmp/kg-fuzz-config.%d", (int)getpid());
    f = fopen(path, "wb");
    if (f == NULL)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    if (kgc_config_load(path, &cfg, err, sizeof err) == 0 && cfg.redis_port <= 0)
        __builtin_trap();
    return 0;
}
