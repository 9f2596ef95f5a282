/* Shared state of the load generator: loadgen.c (options, report), loadgen_tcp.c
 * (echo, short, idle) and loadgen_udp.c (udp). */
#ifndef LOADGEN_H
#define LOADGEN_H

#include <netinet/in.h>
#include <stdint.h>

#define MAX_SIZE (1 << 20)     /* largest message */
#define PATTERN_SPAN 65536     /* payload offsets wrap inside this many bytes */
#define MAX_EVENTS 1024

struct options {
    const char *mode, *host, *ramp, *poll;
    int conns, size, timeout_ms, connect_batch;
    double warmup, duration, hold, ramp_timeout;
    unsigned long long seed;
};

struct results {
    uint64_t requests, bytes, errors, verify_failures, lost, late;
    int stalled, connected, exchanged;
    uint32_t *lat; /* per-request latency, ns, completions inside the window only */
    size_t nlat, caplat;
    double cpu_at_window, cpu_at_end, ramp_s;
    uint64_t polls, empty_polls, empty_poll_ns; /* inside the window */
    char first_error[200];
};

extern struct options opt;
extern struct results res;
extern struct sockaddr_in target;
extern unsigned char *pattern;
extern uint64_t t_start, t_window, t_end;
extern int ramped, window_open, ramp_remaining;

uint64_t now_ns(void);
void note_error(const char *what, int err);
void record(uint64_t started, uint64_t done);
int tick(uint64_t now);
int poll_timeout_ms(uint64_t now, int cap_ms);
void note_poll(uint64_t before, uint64_t after, int events);

/* The expected bytes of message number seq on connection (or slot) id. */
static inline const unsigned char *expected(uint32_t id, uint64_t seq) {
    return pattern + ((id * 131u + seq * 17u) % PATTERN_SPAN);
}

int run_tcp(void);
int run_udp(void);

#endif
