/*
 * spop.h - HAProxy's Stream Processing Offload Protocol (SPOP 2.0), the
 * wire format only: no I/O, no allocation. The contract is haproxy's
 * doc/SPOE.txt §3 (Debian ships it as /usr/share/doc/haproxy/SPOE.txt.gz).
 *
 *   on the wire     <FRAME-LENGTH:4 bytes, network order> <FRAME>
 *   FRAME           <TYPE:1> <FLAGS:4, network order> <STREAM-ID:varint>
 *                   <FRAME-ID:varint> <PAYLOAD>
 *   PAYLOAD         KV-LIST (HELLO, DISCONNECT) | LIST-OF-MESSAGES (NOTIFY)
 *                   | LIST-OF-ACTIONS (ACK)
 *   KV-LIST         [ <NAME:STRING> <TYPED-DATA> ... ]
 *   MESSAGE         <NAME:STRING> <NB-ARGS:1> <KV-LIST of NB-ARGS>
 *   TYPED-DATA      <TYPE:4 bits | FLAGS:4 bits> <DATA>
 *
 * Every decoder takes a cursor (const char **p, const char *end), reads
 * at most up to end, advances *p past what it read and returns 0, or
 * returns -1 when the input ends early or is not what it should be (*p is
 * then unspecified). Every encoder takes (char **p, char *end) the same
 * way and returns -1, writing nothing past end, when the room runs out.
 * Strings handed out by decoders point into the input: not NUL-terminated.
 */
#ifndef KEYGATE_SPOP_H
#define KEYGATE_SPOP_H

#include <stddef.h>
#include <stdint.h>

#define SPOP_VERSION        "2.0"
#define SPOP_MIN_FRAME_SIZE 256       /* SPOE.txt: both peers allow at least this */

enum spop_frame_type {
    SPOP_FRAME_UNSET = 0,             /* a payload fragment after the first */
    SPOP_FRAME_HAPROXY_HELLO = 1,
    SPOP_FRAME_HAPROXY_DISCONNECT = 2,
    SPOP_FRAME_NOTIFY = 3,
    SPOP_FRAME_AGENT_HELLO = 101,
    SPOP_FRAME_AGENT_DISCONNECT = 102,
    SPOP_FRAME_ACK = 103
};

#define SPOP_FLAG_FIN   0x1u
#define SPOP_FLAG_ABORT 0x2u

enum spop_data_type {
    SPOP_DATA_NULL = 0,
    SPOP_DATA_BOOL = 1,
    SPOP_DATA_INT32 = 2,
    SPOP_DATA_UINT32 = 3,
    SPOP_DATA_INT64 = 4,
    SPOP_DATA_UINT64 = 5,
    SPOP_DATA_IPV4 = 6,
    SPOP_DATA_IPV6 = 7,
    SPOP_DATA_STRING = 8,
    SPOP_DATA_BINARY = 9
};

/* Status codes of DISCONNECT frames (SPOE.txt §3.5). */
enum spop_error {
    SPOP_ERR_NONE = 0,
    SPOP_ERR_IO = 1,
    SPOP_ERR_TIMEOUT = 2,
    SPOP_ERR_TOO_BIG = 3,
    SPOP_ERR_INVALID = 4,
    SPOP_ERR_NO_VSN = 5,
    SPOP_ERR_NO_FRAME_SIZE = 6,
    SPOP_ERR_NO_CAP = 7,
    SPOP_ERR_BAD_VSN = 8,
    SPOP_ERR_BAD_FRAME_SIZE = 9,
    SPOP_ERR_FRAG_NOT_SUPPORTED = 10,
    SPOP_ERR_INTERLACED_FRAMES = 11,
    SPOP_ERR_FRAMEID_NOTFOUND = 12,
    SPOP_ERR_RES = 13,
    SPOP_ERR_UNKNOWN = 99
};

/* Variable scopes of set-var actions. */
enum spop_scope {
    SPOP_SCOPE_PROC = 0,
    SPOP_SCOPE_SESS = 1,
    SPOP_SCOPE_TXN = 2,
    SPOP_SCOPE_REQ = 3,
    SPOP_SCOPE_RES = 4
};

#define SPOP_ACTION_SET_VAR   1
#define SPOP_ACTION_UNSET_VAR 2

/* One decoded TYPED-DATA. Which field holds the value depends on type:
 * BOOL: b; INT32/INT64: i; UINT32/UINT64: u; STRING/BINARY: ptr/len
 * (into the input); IPV4/IPV6: ptr/len (4 or 16 bytes); NULL: none. */
typedef struct spop_data {
    int type;                         /* enum spop_data_type */
    int b;
    int64_t i;
    uint64_t u;
    const char *ptr;
    size_t len;
} spop_data;

/* A frame's metadata; payload..end is its payload, inside the input. */
typedef struct spop_frame {
    unsigned type;                    /* enum spop_frame_type, or unknown */
    uint32_t flags;
    uint64_t stream_id, frame_id;
    const char *payload, *end;
} spop_frame;

/* What a HAPROXY-HELLO says; a field not sent stays 0/NULL. */
typedef struct spop_hello {
    const char *versions; size_t versions_len;          /* "supported-versions" */
    const char *caps; size_t caps_len;                  /* "capabilities" */
    uint64_t max_frame_size; int has_max_frame_size;    /* "max-frame-size" */
    int healthcheck;                                    /* "healthcheck" true */
} spop_hello;

/* ---- primitives ---- */
int spop_get_varint(const char **p, const char *end, uint64_t *v);
int spop_put_varint(char **p, char *end, uint64_t v);
int spop_get_string(const char **p, const char *end, const char **s, size_t *len);
int spop_put_string(char **p, char *end, const char *s, size_t len);
int spop_get_data(const char **p, const char *end, spop_data *d);
/* Skips one TYPED-DATA of any known type. */
int spop_skip_data(const char **p, const char *end);

/* An integer of any integer type that fits int64_t. 0, or -1 (another
 * type, or an unsigned value above INT64_MAX). */
int spop_data_int64(const spop_data *d, int64_t *out);

/* ---- frames ---- */

/* Decodes the metadata of the frame buf[0..len) (without the 4-byte length
 * prefix). 0 or -1. */
int spop_get_frame(const char *buf, size_t len, spop_frame *f);

/* Reads a HAPROXY-HELLO payload. Returns SPOP_ERR_NONE, or the status code
 * to disconnect with (SPOP_ERR_INVALID for a malformed list; NO_VSN,
 * NO_FRAME_SIZE, NO_CAP for a missing mandatory item). */
int spop_get_hello(const spop_frame *f, spop_hello *h);

/* 1 if the comma-separated list s (spaces ignored) holds a version whose
 * major number is `major`, else 0. */
int spop_has_major(const char *s, size_t len, unsigned major);

/* 1 if the comma-separated list s (spaces ignored) holds `cap`, else 0. */
int spop_has_cap(const char *s, size_t len, const char *cap);

/*
 * Encoding: a frame goes into buf[0..size): spop_put_head() leaves 4 bytes
 * for the length and writes the metadata, the payload is appended at *p,
 * and spop_finish() writes the length. spop_finish returns the frame's
 * total size on the wire (length prefix included), or -1 if the frame is
 * larger than max_frame_size.
 */
int spop_put_head(char **p, char *end, unsigned type, uint32_t flags,
                  uint64_t stream_id, uint64_t frame_id);
long spop_finish(char *buf, const char *p, uint32_t max_frame_size);

int spop_put_kv_string(char **p, char *end, const char *name, const char *val, size_t len);
int spop_put_kv_uint32(char **p, char *end, const char *name, uint32_t val);

/* A set-var action; name is NUL-terminated. */
int spop_put_setvar_string(char **p, char *end, int scope, const char *name,
                           const char *val, size_t len);
int spop_put_setvar_int64(char **p, char *end, int scope, const char *name, int64_t val);

/* Human text of a DISCONNECT status code (static, never NULL). */
const char *spop_strerror(int code);

#endif /* KEYGATE_SPOP_H */
