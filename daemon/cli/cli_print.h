/*
 * cli_print.h - human output for the keygate CLI: money, times, aligned
 * "label  value" lines and simple tables.
 *
 * Everything here reads JSON defensively: a missing or ill-typed field
 * prints as "-" rather than crashing, so a newer daemon with a changed
 * object still gives readable output.
 */
#ifndef KG_CLI_PRINT_H
#define KG_CLI_PRINT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CLI_MONEY_MAX 96
#define CLI_TIME_MAX  32

/* "12.500000 USD (12500000 micros)"; currency may be NULL. Returns buf. */
const char *cli_money(char *buf, size_t len, int64_t micros, const char *currency);

/* The same for a JSON integer field; "-" if it is not one. */
const char *cli_money_json(char *buf, size_t len, json_t *v, const char *currency);

/* Milliseconds since the epoch as "2024-05-01 12:34:56Z" (UTC); "-" when
 * v is not a positive integer. Returns buf. */
const char *cli_time(char *buf, size_t len, json_t *v);

/* obj[key] as a string: the string itself, an integer in decimal (into
 * an internal rotating buffer), or dflt. Borrowed. */
const char *cli_jstr(json_t *obj, const char *key, const char *dflt);

/* Joins the strings of a JSON array with sep into buf; dflt if empty. */
const char *cli_join(char *buf, size_t len, json_t *array, const char *sep, const char *dflt);

/* One "label        value" line on stdout (label padded to 13 columns). */
void cli_field(const char *label, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A table: header row, then rows; columns padded to their widest cell
 * (counting UTF-8 characters, not bytes). */
typedef struct cli_table cli_table;

cli_table *cli_table_new(size_t ncols, ...);    /* ncols header strings */
void cli_table_row(cli_table *t, ...);          /* ncols cells (NULL = "-"), copied */
void cli_table_print(cli_table *t, int indent); /* prints to stdout */
void cli_table_free(cli_table *t);              /* accepts NULL */

#endif
