/*
 * TCP modes of the load generator: echo (persistent), short (connect, one exchange,
 * close) and idle (one exchange per connection, then hold).
 *
 * Each connection is a small state machine driven by level-triggered epoll.  The epoll
 * cookie carries the connection's index and a generation number, so an event that was
 * queued for a socket closed earlier in the same batch (short mode reuses the slot at
 * once) is recognised and ignored.  At most --connect-batch connections wait for their
 * first reply at a time (a completed connect() only means the kernel queued it, not
 * that the server accepted it), so the ramp does not turn into a SYN flood that only
 * measures the kernel's retransmit timers (RFC 6298 section 2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen.h"

/* ST_IDLE: idle mode's end state, and where --ramp barrier parks a connection. */
enum { ST_QUEUED, ST_RETRY, ST_CONNECTING, ST_ACTIVE, ST_IDLE, ST_DEAD };

struct conn {
    int fd, state, pending, ramped; /* pending: counted in `inflight` */
    uint32_t gen, events;
    size_t sent, recvd;
    uint64_t seq, started, retry_at, done_in_window;
};

static struct conn *conns;
static int *queue, qhead, qlen; /* ring of connections waiting to be opened */
static int ep, inflight, retrying, short_mode, idle_mode, barrier, parked, draining;
static unsigned char *rbuf;

static void enqueue(int i) {
    queue[(qhead + qlen++) % opt.conns] = i;
    conns[i].state = ST_QUEUED;
}

static void unpend(struct conn *c) {
    if (c->pending) {
        c->pending = 0;
        inflight--;
    }
}

/* The first reply on connection (or short-mode slot) c, or its failure: one less to ramp. */
static void ramp_done(struct conn *c) {
    if (!c->ramped) {
        c->ramped = 1;
        ramp_remaining--;
    }
}

static void close_fd(struct conn *c) {
    if (c->fd >= 0) close(c->fd); /* close() also removes it from the epoll set */
    c->fd = -1;
}

/* A failed connection: short mode retries it after 1 ms, the others give it up. */
static void drop(struct conn *c, const char *what, int err, int is_error) {
    if (is_error) note_error(what, err);
    close_fd(c);
    unpend(c);
    if (!short_mode) ramp_done(c); /* a short-mode slot retries: it may still ramp */
    if (short_mode) {
        c->state = ST_RETRY;
        c->retry_at = now_ns() + 1000000;
        retrying++;
    } else {
        if (c->state == ST_IDLE) parked--;
        c->state = ST_DEAD;
    }
}

static void set_events(struct conn *c, int i, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)c->gen << 32 | (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

static void try_send(struct conn *c, int i) {
    const unsigned char *msg = expected((uint32_t)i, c->seq);
    while (c->sent < (size_t)opt.size) {
        ssize_t n = send(c->fd, msg + c->sent, (size_t)opt.size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            drop(c, "send", errno, 1);
            return;
        }
        c->sent += (size_t)n;
    }
    set_events(c, i, EPOLLIN | (c->sent < (size_t)opt.size ? EPOLLOUT : 0));
}

static void start_request(struct conn *c, int i, uint64_t now) {
    if (!short_mode) c->started = now; /* short mode times from the connect() call */
    c->sent = c->recvd = 0;
    try_send(c, i);
}

static void open_conn(int i, uint64_t now) {
    struct conn *c = &conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->gen++;
    c->pending = 1;
    inflight++;
    c->started = now;
    c->state = ST_CONNECTING;
    if (c->fd < 0) {
        drop(c, "socket", errno, 1);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)c->gen << 32 | (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        drop(c, "epoll_ctl", errno, 1);
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS)
        drop(c, "connect", errno, 1);
    /* On success or EINPROGRESS, EPOLLOUT reports the outcome. */
}

static void on_connected(struct conn *c, int i, uint64_t now) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        drop(c, "connect", err, 1);
        return;
    }
    res.connected++;
    c->state = ST_ACTIVE;
    start_request(c, i, now);
}

static void complete(struct conn *c, int i) {
    uint64_t now = now_ns();
    if (window_open && now < t_end) {
        record(c->started, now);
        c->done_in_window++;
    }
    if (c->seq++ == 0) res.exchanged++;
    unpend(c);
    ramp_done(c);
    if (draining) {
        close_fd(c);
        c->state = ST_DEAD;
    } else if (idle_mode || (barrier && !ramped)) {
        c->state = ST_IDLE;
        parked++;
        set_events(c, i, EPOLLIN); /* keep watching: a close by the server is an error */
    } else if (short_mode) {
        close_fd(c);
        enqueue(i);
    } else {
        start_request(c, i, now);
    }
}

static void on_readable(struct conn *c, int i) {
    for (;;) {
        size_t want = c->state == ST_IDLE ? 1 : (size_t)opt.size - c->recvd;
        ssize_t n = recv(c->fd, rbuf, want, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            drop(c, n == 0 ? "connection closed by the server" : "recv", n ? errno : 0, 1);
            return;
        }
        if (c->state == ST_IDLE || memcmp(rbuf, expected((uint32_t)i, c->seq) + c->recvd,
                                          (size_t)n)) {
            res.verify_failures++;
            drop(c, "", 0, 0);
            return;
        }
        c->recvd += (size_t)n;
        if (c->recvd == (size_t)opt.size) {
            complete(c, i);
            return;
        }
    }
}

/* End of a barrier ramp: every connection that got its first reply starts its load. */
static void release_parked(uint64_t now) {
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].state == ST_IDLE) {
            conns[i].state = ST_ACTIVE;
            start_request(&conns[i], i, now);
        }
    parked = 0;
}

static void requeue_due_retries(uint64_t now) {
    for (int i = 0; i < opt.conns && retrying; i++)
        if (conns[i].state == ST_RETRY && conns[i].retry_at <= now) {
            retrying--;
            enqueue(i);
        }
}

static void dispatch(struct epoll_event *ev, uint64_t now) {
    int i = (int)(uint32_t)ev->data.u64;
    struct conn *c = &conns[i];
    if (c->fd < 0 || c->gen != (uint32_t)(ev->data.u64 >> 32)) return; /* stale */
    if (c->state == ST_CONNECTING) {
        on_connected(c, i, now);
        return;
    }
    uint32_t gen = c->gen;
    if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c, i);
    if ((ev->events & EPOLLOUT) && c->fd >= 0 && c->gen == gen && c->state == ST_ACTIVE)
        try_send(c, i);
}

/* After the window: let the exchanges in flight finish (for at most a second), then close
 * every connection in order, so that the servers see EOF rather than resets (a reset
 * makes the stdlib's handle_error() print a traceback per connection, which would bury
 * real errors in the server's log).  The "window_end" marker is out already. */
static void drain(void) {
    struct epoll_event events[MAX_EVENTS];
    draining = 1;
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].state != ST_ACTIVE) close_fd(&conns[i]);
    uint64_t deadline = now_ns() + 1000000000u;
    for (;;) {
        int active = 0;
        for (int i = 0; i < opt.conns; i++)
            active += conns[i].state == ST_ACTIVE && conns[i].fd >= 0;
        if (!active || now_ns() >= deadline) break;
        int n = epoll_wait(ep, events, MAX_EVENTS, 10);
        for (int k = 0; k < n; k++) dispatch(&events[k], now_ns());
    }
    for (int i = 0; i < opt.conns; i++) close_fd(&conns[i]);
}

int run_tcp(void) {
    short_mode = !strcmp(opt.mode, "short");
    idle_mode = !strcmp(opt.mode, "idle");
    barrier = !short_mode && !strcmp(opt.ramp, "barrier");
    conns = calloc((size_t)opt.conns, sizeof *conns);
    queue = calloc((size_t)opt.conns, sizeof *queue);
    rbuf = malloc((size_t)opt.size);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !queue || !rbuf || ep < 0) {
        perror("loadgen setup");
        return 1;
    }
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        enqueue(i);
    }
    ramp_remaining = opt.conns;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        uint64_t now = now_ns();
        if (!tick(now) || (idle_mode && ramped)) break;
        if (ramped && parked) release_parked(now);
        if (retrying) requeue_due_retries(now);
        while (inflight < opt.connect_batch && qlen > 0) {
            int i = queue[qhead];
            qhead = (qhead + 1) % opt.conns;
            qlen--;
            open_conn(i, now);
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, poll_timeout_ms(now, retrying ? 1 : 100));
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        uint64_t after = now_ns();
        note_poll(now, after, n);
        for (int k = 0; k < n; k++) dispatch(&events[k], after);
    }
    for (int i = 0; i < opt.conns; i++)
        if (idle_mode ? conns[i].state != ST_IDLE : conns[i].done_in_window == 0) res.stalled++;
    if (!idle_mode) drain();
    return 0;
}
