/*
 * loadgen: closed-loop load generator for the echo benchmark (one thread, epoll).
 *
 *   loadgen --mode echo|short|udp|idle --port PORT [--host 127.0.0.1] [--conns N]
 *           [--size BYTES] [--ramp-timeout SECONDS] [--warmup SECONDS]
 *           [--duration SECONDS] [--timeout-ms MS] [--connect-batch N] [--hold SECONDS]
 *           [--ramp barrier|live] [--poll busy|sleep] [--seed N]
 *
 * Modes:
 *   echo   N persistent connections; each sends one message of SIZE bytes, waits for
 *          the whole echo, checks every byte, and sends the next.
 *   short  N concurrent slots; each connects, does one exchange, closes, repeats.
 *   udp    N outstanding datagrams on one socket; a datagram without a reply after
 *          --timeout-ms is counted lost and replaced by a new one.
 *   idle   opens N connections, does one exchange on each (so the server has really
 *          accepted it), prints the JSON report, then holds them open until stdin
 *          reaches EOF or --hold seconds pass.
 *
 * Phases: the ramp opens the TCP connections, at most --connect-batch of them waiting for
 * their first reply at a time; it ends when every connection has had one (or failed), or
 * after --ramp-timeout seconds.  Then comes the warm-up, then the measured window.  With
 * --ramp barrier (the default) a connection that got its first reply waits for the ramp
 * to end, so the window measures N connections served together; with --ramp live it
 * goes on at once, so later connections are accepted by a server already under load.
 * A connection the server never served shows up as stalled, not as a shorter warm-up.
 *
 * --poll busy (the default) never sleeps in epoll_wait(): the load generator has a CPU of
 * its own, and waking a sleeping CPU costs tens of microseconds in a virtual machine,
 * enough to throttle a fast server to half its rate in lock-step.  Its CPU use is then
 * always 100 %, so the report gives instead the share of the window spent in polls that
 * found nothing to do ("loadgen_idle_pct"): well above zero means the load generator
 * was waiting for the server, not the other way round.
 *
 * Output (stdout, each line flushed): "window_start" when the warm-up ends, "window_end"
 * when the measured window ends, then one JSON object.  The driver samples the server's
 * CPU time when it reads the two markers.  Only exchanges that complete inside the
 * window are counted.  Every loop is bounded by ramp + warm-up + duration (+ hold in idle
 * mode), and only loopback addresses (127.0.0.0/8) are accepted as targets.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen.h"

struct options opt = {
    .mode = "echo", .host = "127.0.0.1", .ramp = "barrier", .poll = "busy", .conns = 50,
    .size = 64, .warmup = 1.0, .duration = 5.0, .ramp_timeout = 10.0, .timeout_ms = 200,
    .connect_batch = 4, .hold = 30.0, .seed = 0x5eed,
};
struct results res;
struct sockaddr_in target;
unsigned char *pattern;
uint64_t t_start, t_window, t_end;
int ramped, window_open, window_closed, ramp_remaining;

uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

void note_error(const char *what, int err) {
    res.errors++;
    if (!res.first_error[0])
        snprintf(res.first_error, sizeof res.first_error, "%s%s%s", what, err ? ": " : "",
                 err ? strerror(err) : "");
}

void record(uint64_t started, uint64_t done) {
    res.requests++;
    res.bytes += (uint64_t)opt.size;
    if (res.nlat == res.caplat) {
        res.caplat = res.caplat ? res.caplat * 2 : 1 << 16;
        res.lat = realloc(res.lat, res.caplat * sizeof *res.lat);
        if (!res.lat) {
            perror("realloc");
            exit(1);
        }
    }
    uint64_t ns = done - started;
    res.lat[res.nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

/* Advance the phases; returns 0 once the measured window is over. */
int tick(uint64_t now) {
    uint64_t ramp_deadline = t_start + (uint64_t)(opt.ramp_timeout * 1e9);
    if (!ramped && (ramp_remaining <= 0 || now >= ramp_deadline)) {
        ramped = 1;
        res.ramp_s = (double)(now - t_start) / 1e9;
        t_window = now + (uint64_t)(opt.warmup * 1e9);
        t_end = t_window + (uint64_t)(opt.duration * 1e9);
    }
    if (!ramped) return 1;
    if (!window_open && now >= t_window) {
        window_open = 1;
        res.cpu_at_window = cpu_seconds();
        fputs("window_start\n", stdout);
        fflush(stdout);
    }
    if (window_open && !window_closed && now >= t_end) {
        window_closed = 1;
        res.cpu_at_end = cpu_seconds();
        fputs("window_end\n", stdout);
        fflush(stdout);
    }
    return now < t_end;
}

/* Count a poll in the window; one that found nothing is load generator idle time. */
void note_poll(uint64_t before, uint64_t after, int events) {
    if (!window_open || before >= t_end) return;
    res.polls++;
    if (events <= 0) {
        res.empty_polls++;
        res.empty_poll_ns += (after < t_end ? after : t_end) - before;
    }
}

/* epoll_wait timeout (ms): 0 when busy-polling, else until the next marker, <= cap_ms. */
int poll_timeout_ms(uint64_t now, int cap_ms) {
    if (!strcmp(opt.poll, "busy")) return 0;
    uint64_t next = !ramped ? t_start + (uint64_t)(opt.ramp_timeout * 1e9)
                  : window_open ? t_end : t_window;
    uint64_t ms = next > now ? (next - now + 999999) / 1000000 : 0;
    return ms < (uint64_t)cap_ms ? (int)ms : cap_ms;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(double p) {
    if (!res.nlat) return 0;
    size_t i = (size_t)(p * (double)(res.nlat - 1) + 0.5);
    return res.lat[i] / 1000.0;
}

static void print_json(void) {
    qsort(res.lat, res.nlat, sizeof *res.lat, cmp_u32);
    double window = window_open ? (double)(t_end - t_window) / 1e9 : 0;
    char err[300];
    size_t j = 0; /* the message is ours (strerror), but keep the JSON valid anyway */
    for (const char *s = res.first_error; *s && j < sizeof err - 1; s++)
        if (*s != '"' && *s != '\\') err[j++] = *s;
    err[j] = 0;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %d, \"warmup_s\": %.3f, "
           "\"duration_s\": %.3f, \"ramp_s\": %.3f, \"requests\": %llu, \"bytes\": %llu, "
           "\"rate\": %.1f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, "
           "\"stalled\": %d, \"connected\": %d, \"exchanged\": %d, \"errors\": %llu, "
           "\"verify_failures\": %llu, \"lost\": %llu, \"late\": %llu, "
           "\"loadgen_cpu_pct\": %.1f, \"loadgen_idle_pct\": %.1f, \"first_error\": \"%s\"}\n",
           opt.mode, opt.conns, opt.size, opt.warmup, opt.duration, res.ramp_s,
           (unsigned long long)res.requests, (unsigned long long)res.bytes,
           window > 0 ? res.requests / window : 0.0, pct_us(0.50), pct_us(0.90),
           pct_us(0.99), pct_us(1.0), res.stalled, res.connected, res.exchanged,
           (unsigned long long)res.errors, (unsigned long long)res.verify_failures,
           (unsigned long long)res.lost, (unsigned long long)res.late,
           window > 0 ? 100.0 * (res.cpu_at_end - res.cpu_at_window) / window : 0.0,
           window > 0 ? 100.0 * (double)res.empty_poll_ns / 1e9 / window : 0.0, err);
    fflush(stdout);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --mode echo|short|udp|idle --port PORT [--host 127.0.0.1]\n"
            "       [--conns N] [--size BYTES] [--ramp-timeout S] [--warmup S]\n"
            "       [--duration S] [--timeout-ms MS] [--connect-batch N] [--hold S]\n"
            "       [--ramp barrier|live] [--poll busy|sleep] [--seed N]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    int port = -1;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage(argv[0]);
        i++;
        if (!strcmp(k, "--mode")) opt.mode = v;
        else if (!strcmp(k, "--host")) opt.host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(k, "--size")) opt.size = atoi(v);
        else if (!strcmp(k, "--warmup")) opt.warmup = atof(v);
        else if (!strcmp(k, "--duration")) opt.duration = atof(v);
        else if (!strcmp(k, "--ramp-timeout")) opt.ramp_timeout = atof(v);
        else if (!strcmp(k, "--ramp")) opt.ramp = v;
        else if (!strcmp(k, "--poll")) opt.poll = v;
        else if (!strcmp(k, "--timeout-ms")) opt.timeout_ms = atoi(v);
        else if (!strcmp(k, "--connect-batch")) opt.connect_batch = atoi(v);
        else if (!strcmp(k, "--hold")) opt.hold = atof(v);
        else if (!strcmp(k, "--seed")) opt.seed = strtoull(v, NULL, 0);
        else usage(argv[0]);
    }
    if (port <= 0 || port > 65535 || opt.conns < 1 || opt.size < 1 || opt.size > MAX_SIZE ||
        opt.warmup < 0 || opt.duration <= 0 || opt.duration > 3600 || opt.hold < 0 ||
        opt.ramp_timeout < 0 || opt.ramp_timeout > 3600 || opt.warmup > 3600 ||
        opt.hold > 3600 || opt.timeout_ms < 1 || opt.connect_batch < 1 ||
        (strcmp(opt.ramp, "barrier") && strcmp(opt.ramp, "live")) ||
        (strcmp(opt.poll, "busy") && strcmp(opt.poll, "sleep")))
        usage(argv[0]);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    /* Load is only ever sent to this machine: refuse anything outside 127.0.0.0/8. */
    if (inet_pton(AF_INET, opt.host, &target.sin_addr) != 1 ||
        (ntohl(target.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: --host must be a loopback address (127.0.0.0/8)\n");
        exit(2);
    }
}

/* Fixed-seed pseudo-random bytes (xorshift64*): the same payloads in every run. */
static void make_pattern(void) {
    pattern = malloc(PATTERN_SPAN + MAX_SIZE);
    if (!pattern) {
        perror("malloc");
        exit(1);
    }
    uint64_t x = opt.seed ? opt.seed : 1;
    for (size_t i = 0; i < PATTERN_SPAN + MAX_SIZE; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pattern[i] = (unsigned char)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    make_pattern();
    t_start = now_ns();

    int rc;
    if (!strcmp(opt.mode, "udp"))
        rc = run_udp();
    else if (!strcmp(opt.mode, "echo") || !strcmp(opt.mode, "short") ||
             !strcmp(opt.mode, "idle"))
        rc = run_tcp();
    else
        usage(argv[0]);
    if (rc) return rc;

    if (strcmp(opt.mode, "idle")) {
        tick(now_ns()); /* a window with no event at all still opens and closes */
        print_json();
        return 0;
    }
    print_json();
    /* Hold the idle connections while the driver reads the server's memory. */
    struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
    uint64_t until = now_ns() + (uint64_t)(opt.hold * 1e9);
    char buf[256];
    for (uint64_t now = now_ns(); now < until; now = now_ns()) {
        int n = poll(&pfd, 1, (int)((until - now) / 1000000 + 1));
        if (n > 0 && read(STDIN_FILENO, buf, sizeof buf) <= 0) break;
        if (n < 0 && errno != EINTR) break;
    }
    return 0;
}
