/*
 * log.h - stderr logging. Every line carries the function that wrote it.
 * Never pass a token, a pepper or a password to these.
 */
#ifndef KG_LOG_H
#define KG_LOG_H

enum { LOG_ERR_ = 0, LOG_WARN_ = 1, LOG_INFO_ = 2, LOG_DEBUG_ = 3 };

void log_set_level(int level);
/* 1: one JSON object a line {"ts","level","func","msg"}; 0: text. */
void log_set_json(int json);
void log_at(int level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(...)   log_at(LOG_ERR_, __func__, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_WARN_, __func__, __VA_ARGS__)
#define log_info(...)  log_at(LOG_INFO_, __func__, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG_, __func__, __VA_ARGS__)

/* Out of memory in the daemon is fatal: abort loudly (STYLE: Redis). */
void *xmalloc(unsigned long n);
void *xcalloc(unsigned long n, unsigned long size);
char *xstrdup(const char *s);
void oom(const char *what) __attribute__((noreturn));

#endif
