/*
 * UDP mode of the load generator: --conns datagrams outstanding on one connected socket.
 *
 * Each datagram starts with its slot number and sequence number (two little-endian
 * 32-bit words), followed by fixed-seed payload bytes, so every reply can be matched to
 * its request and checked byte for byte.  A slot whose datagram got no reply within
 * --timeout-ms is counted lost and sends a fresh datagram; a reply that arrives after
 * that is counted late, not verified against the newer request.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen.h"

#define HEADER 8
#define SOCKET_BUFFER (4 << 20)
#define RECV_BURST 1024 /* replies read before the clock is looked at again */

struct slot {
    uint32_t seq;
    uint64_t sent_at, done_in_window;
};

static int fd;
static struct slot *slots;
static unsigned char *sbuf, *rbuf;

static void send_slot(uint32_t i, uint64_t now) {
    struct slot *s = &slots[i];
    s->seq++;
    s->sent_at = now;
    memcpy(sbuf, &i, 4);
    memcpy(sbuf + 4, &s->seq, 4);
    memcpy(sbuf + HEADER, expected(i, s->seq), (size_t)opt.size - HEADER);
    /* EAGAIN (our send buffer is full) loses the datagram; the timeout resends it. */
    if (send(fd, sbuf, (size_t)opt.size, 0) < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        note_error("send", errno);
}

static void on_reply(ssize_t n, uint64_t now) {
    uint32_t i, seq;
    if (n != opt.size) {
        res.verify_failures++;
        return;
    }
    memcpy(&i, rbuf, 4);
    memcpy(&seq, rbuf + 4, 4);
    if (i >= (uint32_t)opt.conns) {
        res.verify_failures++;
        return;
    }
    if (seq != slots[i].seq) {
        res.late++;
        return;
    }
    if (memcmp(rbuf + HEADER, expected(i, seq), (size_t)opt.size - HEADER)) {
        res.verify_failures++;
    } else if (window_open && now < t_end) {
        record(slots[i].sent_at, now);
        slots[i].done_in_window++;
    }
    send_slot(i, now);
}

static void resend_timed_out(uint64_t now) {
    uint64_t timeout = (uint64_t)opt.timeout_ms * 1000000u;
    for (uint32_t i = 0; i < (uint32_t)opt.conns; i++)
        if (now - slots[i].sent_at >= timeout) {
            if (window_open) res.lost++;
            send_slot(i, now);
        }
}

int run_udp(void) {
    if (opt.size < HEADER || opt.size > 65507) {
        fprintf(stderr, "loadgen: udp needs --size between %d and 65507\n", HEADER);
        return 2;
    }
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    slots = calloc((size_t)opt.conns, sizeof *slots);
    sbuf = malloc((size_t)opt.size);
    rbuf = malloc((size_t)opt.size + 1);
    if (fd < 0 || !slots || !sbuf || !rbuf) {
        perror("loadgen setup");
        return 1;
    }
    int bufsize = SOCKET_BUFFER;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
        perror("connect");
        return 1;
    }
    uint64_t now = now_ns();
    for (uint32_t i = 0; i < (uint32_t)opt.conns; i++) send_slot(i, now);

    int scan_ms = opt.timeout_ms / 4 > 0 ? opt.timeout_ms / 4 : 1;
    uint64_t next_scan = now + (uint64_t)scan_ms * 1000000u;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (tick(now = now_ns())) {
        if (now >= next_scan) {
            resend_timed_out(now);
            next_scan = now + (uint64_t)scan_ms * 1000000u;
        }
        int n = poll(&pfd, 1, poll_timeout_ms(now, scan_ms));
        if (n < 0 && errno != EINTR) {
            perror("poll");
            return 1;
        }
        note_poll(now, now_ns(), n);
        for (int k = 0; n > 0 && k < RECV_BURST; k++) {
            ssize_t got = recv(fd, rbuf, (size_t)opt.size + 1, 0);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno != EINTR) note_error("recv", errno); /* e.g. ECONNREFUSED */
                continue;
            }
            on_reply(got, now_ns());
        }
    }
    for (int i = 0; i < opt.conns; i++)
        if (slots[i].done_in_window == 0) res.stalled++;
    res.connected = res.exchanged = opt.conns;
    return 0;
}
