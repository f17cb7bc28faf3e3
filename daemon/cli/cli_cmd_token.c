/*
 * cli_cmd_token.c - keygate token generate / rotate.
 *
 * The daemon shows a token exactly once. So that it is not lost on the way:
 * the --out file is opened (and checked) before the daemon is asked, and
 * the token is written with write(2) from the answer, never through stdio
 * buffers, then wiped. With --out, only the hint reaches the terminal.
 */
#include "cli.h"
#include "cli_print.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kgc_token.h"

typedef struct outfile {
    const char *path;             /* borrowed from argv */
    int fd;                       /* open for writing, or -1 */
    int created;                  /* 1 if we created it (unlinked on failure) */
} outfile;

/* Opens path for the secret: a new file with mode 0600 (O_EXCL), or an
 * existing regular file of ours with one link, set to 0600. Never writes
 * through a symbolic link (O_NOFOLLOW on the last component) and never
 * blocks on a FIFO. The file is truncated only once there is a token to
 * put in it. Returns 0, or -1 with the reason in err. */
static int outfile_open(outfile *o, char *err, size_t errlen)
{
    struct stat st;
    int fd;

    o->fd = -1;
    o->created = 0;
    fd = open(o->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
        o->fd = fd;
        o->created = 1;
        return 0;
    }
    if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", o->path, strerror(errno));
        return -1;
    }
    fd = open(o->path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", o->path,
                 errno == ELOOP ? "it is a symbolic link; refusing to write a secret through it"
                                : strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "cannot stat %s: %s", o->path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", o->path);
        goto fail;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "%s belongs to another user; refusing to write a secret into it",
                 o->path);
        goto fail;
    }
    if (st.st_nlink != 1) {
        snprintf(err, errlen, "%s has %lu hard links; refusing to write a secret into it",
                 o->path, (unsigned long)st.st_nlink);
        goto fail;
    }
    /* Tighten before anything secret is in it. */
    if (fchmod(fd, 0600) < 0 || fcntl(fd, F_SETFL, 0) < 0) {
        snprintf(err, errlen, "cannot set mode 0600 on %s: %s", o->path, strerror(errno));
        goto fail;
    }
    o->fd = fd;
    return 0;

fail:
    close(fd);
    return -1;
}

/* Gives up on the file: removes it if we made it (it is still empty). */
static void outfile_abandon(outfile *o)
{
    if (o->fd < 0)
        return;
    close(o->fd);
    o->fd = -1;
    if (o->created)
        unlink(o->path);
}

/* Writes token + "\n", durably. Returns 0 or -1 with the reason in err. */
static int outfile_write(outfile *o, const char *tok, size_t len, char *err, size_t errlen)
{
    size_t off = 0;

    if (ftruncate(o->fd, 0) < 0)
        goto fail;
    while (off < len + 1) {
        ssize_t w = off < len ? write(o->fd, tok + off, len - off) : write(o->fd, "\n", 1);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto fail;
        off += (size_t)w;
    }
    if (fsync(o->fd) < 0)
        goto fail;
    if (close(o->fd) < 0) {
        o->fd = -1;
        goto fail;
    }
    o->fd = -1;
    return 0;

fail:
    snprintf(err, errlen, "writing %s: %s", o->path, strerror(errno ? errno : EIO));
    outfile_abandon(o);
    return -1;
}

/* Wipes the secret in the answer (jansson owns the bytes) and drops it. */
static void wipe_token(json_t *res)
{
    json_t *t = json_object_get(res, "token");

    if (json_is_string(t))
        sodium_memzero((char *)json_string_value(t), json_string_length(t));
    json_object_del(res, "token");
}

static void print_token_facts(FILE *f, json_t *res)
{
    json_t *old = json_object_get(res, "old_expires_at");

    fprintf(f, "%-13s%s\n", "hint", cli_jstr(res, "hint", "-"));
    fprintf(f, "%-13s%s\n", "token_id", cli_jstr(res, "token_id", "-"));
    fprintf(f, "%-13s%s\n", "key_id", cli_jstr(res, "key_id", "-"));
    fprintf(f, "%-13s%s\n", "user_id", cli_jstr(res, "user_id", "-"));
    if (json_is_integer(old)) {
        char tb[CLI_TIME_MAX];
        fprintf(f, "%-13sworks until %s (grace period)\n", "old_token",
                cli_time(tb, sizeof tb, old));
    } else if (old != NULL) {
        fprintf(f, "%-13sstopped working now\n", "old_token");
    }
}

/* The shared tail of generate and rotate: the answer holds the secret. */
static int deliver_token(cli_ctx *ctx, json_t *res, outfile *out)
{
    json_t *t = json_object_get(res, "token");
    const char *tok = json_string_value(t);
    size_t len = json_string_length(t);
    char err[512];

    if (tok == NULL || !kgc_token_wellformed(tok, len)) {
        fprintf(stderr, "error: internal: the daemon's answer holds no well-formed token\n");
        outfile_abandon(out);
        wipe_token(res);
        json_decref(res);
        return CLI_EXIT_REFUSED;
    }

    if (out->path != NULL) {
        int rc = outfile_write(out, tok, len, err, sizeof err);
        wipe_token(res);
        if (rc < 0) {
            fprintf(stderr, "error: output: %s\n", err);
            fprintf(stderr, "the token %s was issued but not saved; issue a new one with: "
                    "keygate token rotate %s\n", cli_jstr(res, "hint", "?"),
                    cli_jstr(res, "key_id", "KEY"));
            json_decref(res);
            return CLI_EXIT_REFUSED;
        }
        if (ctx->json) {
            json_t *p = json_string(out->path);
            /* A path that is not UTF-8 cannot be a JSON string: null then. */
            json_object_set_new(res, "out", p ? p : json_null());
            cli_write_json_line(res);
        } else {
            printf("token %s written to %s (mode 0600)\n", cli_jstr(res, "hint", "-"), out->path);
            print_token_facts(stdout, res);
        }
        json_decref(res);
        return CLI_EXIT_OK;
    }

    /* No file: the token goes to stdout, alone on its line, so that
     * TOKEN=$(keygate token generate KEY) works; the rest to stderr. */
    if (ctx->json) {
        cli_write_json_line(res);
    } else {
        fflush(stdout);
        if (cli_write_all(STDOUT_FILENO, tok, len) < 0 || cli_write_all(STDOUT_FILENO, "\n", 1) < 0)
            fprintf(stderr, "error: output: %s\n", strerror(errno));
        print_token_facts(stderr, res);
    }
    fputs("warning: this token is shown once and cannot be shown again; store it now "
          "(or use --out FILE)\n", stderr);
    wipe_token(res);
    json_decref(res);
    return CLI_EXIT_OK;
}

int cli_cmd_token_generate(cli_ctx *ctx, int argc, char **argv)
{
    outfile out = {.fd = -1};
    const cli_opt opts[] = {{"--out", CLI_OPT_VALUE, &out.path}, {NULL, 0, NULL}};
    cli_strlist pos;
    json_t *res;
    char err[512];
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if (out.path != NULL && outfile_open(&out, err, sizeof err) < 0) {
        fprintf(stderr, "error: output: %s\n", err);
        return CLI_EXIT_REFUSED;
    }
    rc = cli_call(ctx, "token.generate", json_pack("{s:s}", "key", pos.v[0]), 1, &res);
    if (rc) {
        outfile_abandon(&out);
        return rc;
    }
    return deliver_token(ctx, res, &out);
}

int cli_cmd_token_rotate(cli_ctx *ctx, int argc, char **argv)
{
    outfile out = {.fd = -1};
    const char *user = NULL, *grace = NULL;
    const cli_opt opts[] = {
        {"--out", CLI_OPT_VALUE, &out.path},
        {"--user", CLI_OPT_VALUE, &user},
        {"--grace", CLI_OPT_VALUE, &grace},
        {NULL, 0, NULL},
    };
    cli_strlist pos;
    json_t *args, *res;
    int64_t g = 0;
    char err[512];
    int rc;

    if (cli_args(ctx, argc, argv, opts, &pos, 1, 1) < 0)
        return ctx->status;
    if (grace != NULL && cli_parse_i64(grace, &g) < 0)
        return cli_usage_error(ctx, "--grace wants whole seconds, not '%s'", grace);
    if (out.path != NULL && outfile_open(&out, err, sizeof err) < 0) {
        fprintf(stderr, "error: output: %s\n", err);
        return CLI_EXIT_REFUSED;
    }
    args = json_pack("{s:s,s:s*}", "key", pos.v[0], "user", user);
    if (args && grace != NULL)
        json_object_set_new(args, "grace_seconds", json_integer(g));
    rc = cli_call(ctx, "token.rotate", args, 1, &res);
    if (rc) {
        outfile_abandon(&out);
        return rc;
    }
    return deliver_token(ctx, res, &out);
}
