/*
 * cli_authorize.h - `keygate authorize`: one request through libkeygate,
 * from a shell, the way pamtester drives a PAM module.
 *
 *   keygate authorize [--config FILE] (--token-file F | --token T)
 *                     --service S [--model M] [--param name=value ...]
 *                     [--request-id R] [--json]
 *
 * argv[0] is the word "authorize" (a program name, as for getopt); the
 * options follow. --config defaults to $KEYGATE_CONFIG. --token-file -
 * reads the token from stdin. The token is never printed.
 *
 * Exit status: 0 authorized (KG_OK); 1 refused by the module (any other
 * status but KG_BACKEND_ERROR); 2 bad usage, or a config or token file
 * that cannot be used; 3 KG_BACKEND_ERROR (the store is unreachable or
 * too slow), as the CLI's "unreachable".
 */
#ifndef CLI_AUTHORIZE_H
#define CLI_AUTHORIZE_H

int cli_authorize(int argc, char **argv);

#endif
