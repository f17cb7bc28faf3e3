/* libFuzzer target: the token parser (format + checksum) and the hint. */
#include "kgc_token.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char hint[KGC_HINT_MAX];

    if (kgc_token_wellformed((const char *)data, size)) {
        kgc_token_hint((const char *)data, size, hint);
        if (strlen(hint) != 14)
            __builtin_trap();
    }
    return 0;
}
