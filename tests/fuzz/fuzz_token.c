/* libFuzzer target: the token parser (format + checksum), the hint and the
 * team part (issue 11). */
#include "kgc_token.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char hint[KGC_HINT_MAX], team[KGC_TOKEN_TEAM_LEN + 3], again[KGC_TOKEN_LEN + 1];

    if (kgc_token_wellformed((const char *)data, size)) {
        kgc_token_hint((const char *)data, size, hint);
        if (strlen(hint) != 14)
            __builtin_trap();
        /* The team a well-formed token names is a team id a fresh token
         * of the same team can be made from, carrying the same part. */
        kgc_token_team((const char *)data, team);
        if (kgc_token_generate(team, again) != 0 ||
            memcmp(again + KGC_TOKEN_TEAM_AT, data + KGC_TOKEN_TEAM_AT, KGC_TOKEN_TEAM_LEN) != 0)
            __builtin_trap();
    }
    return 0;
}
