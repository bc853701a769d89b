/*
 * conn_client: new-connection rate generator for bench/datapath.py.
 *
 * Keeps CONC non-blocking TCP connections in flight per thread (epoll, level-triggered).
 * One connection = connect() -> wait for the server's 1-byte reply -> close with
 * SO_LINGER {1, 0} (an RST, so neither side keeps TIME_WAIT) -> open the next one at once.
 * A connection counts as completed when the reply byte arrived; only completions after the
 * warm-up are counted.  A connection that has not completed within TIMEOUT ms is abandoned
 * (counted as a timeout) and replaced, so a dropped SYN costs a slot only briefly.
 *
 * Usage: conn_client DST_IP PORT DURATION_S [CONC] [THREADS] [WARMUP_S] [TIMEOUT_MS]
 * Prints one line: "completed N failed N timeouts N elapsed S total N cpu S", where total
 * also counts the warm-up's completions and cpu is the process's user + system time (which,
 * without IRQ time accounting, includes the softirq work the kernel does on its behalf).
 *
 * Only ever connects to DST_IP:PORT; the run is bounded by WARMUP_S + DURATION_S.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

#define MAX_CONC 4096

struct slot {
    int fd;
    double started;
};

struct worker {
    pthread_t thread;
    int conc;
    uint64_t completed, failed, timeouts;
    uint64_t total; /* completed including the warm-up */
};

static struct sockaddr_in dst;
static double t_start, t_count, t_end; /* monotonic seconds */
static double timeout_s;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

/* Open a socket for slot i and start connecting; registers it with epoll for EPOLLOUT. */
static void open_slot(int ep, struct slot *slots, int i)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        die("socket");
    struct linger lg = {1, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0)
        die("setsockopt SO_LINGER");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS)
        die("connect");
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl add");
    slots[i].fd = fd;
    slots[i].started = now();
}

static void close_slot(struct slot *slots, int i)
{
    close(slots[i].fd); /* closing removes it from the epoll set; linger 0 sends an RST */
    slots[i].fd = -1;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    struct slot slots[MAX_CONC];
    struct epoll_event events[256];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < w->conc; i++)
        open_slot(ep, slots, i);
    double last_scan = now();
    for (;;) {
        double t = now();
        if (t >= t_end)
            break;
        int n = epoll_wait(ep, events, 256, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        t = now();
        int counting = t >= t_count && t < t_end;
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            int fd = slots[i].fd;
            if (fd < 0)
                continue;
            if (events[k].events & EPOLLOUT) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    if (counting)
                        w->failed++;
                    close_slot(slots, i);
                    open_slot(ep, slots, i);
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0)
                    die("epoll_ctl mod");
                continue;
            }
            char buf[16];
            ssize_t got = read(fd, buf, sizeof buf);
            if (got < 0 && errno == EAGAIN)
                continue;
            if (got > 0)
                w->total++;
            if (counting) {
                if (got > 0)
                    w->completed++;
                else
                    w->failed++;
            }
            close_slot(slots, i);
            open_slot(ep, slots, i);
        }
        if (t - last_scan > 0.05) { /* abandon connections stuck (e.g. a dropped SYN) */
            last_scan = t;
            for (int i = 0; i < w->conc; i++) {
                if (slots[i].fd >= 0 && t - slots[i].started > timeout_s) {
                    if (counting)
                        w->timeouts++;
                    close_slot(slots, i);
                    open_slot(ep, slots, i);
                }
            }
        }
    }
    for (int i = 0; i < w->conc; i++)
        if (slots[i].fd >= 0)
            close_slot(slots, i);
    close(ep);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr,
                "usage: %s DST_IP PORT DURATION_S [CONC] [THREADS] [WARMUP_S] [TIMEOUT_MS]\n",
                argv[0]);
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    double duration = atof(argv[3]);
    int conc = argc > 4 ? atoi(argv[4]) : 64;
    int threads = argc > 5 ? atoi(argv[5]) : 1;
    double warmup = argc > 6 ? atof(argv[6]) : 0.5;
    timeout_s = (argc > 7 ? atof(argv[7]) : 1000.0) / 1000.0;
    if (duration <= 0 || duration > 600 || conc < 1 || conc > MAX_CONC || threads < 1 ||
        threads > 64 || warmup < 0 || warmup > 60 || timeout_s <= 0) {
        fprintf(stderr, "argument out of range\n");
        return 2;
    }
    struct rlimit rl = {MAX_CONC * 64 + 64, MAX_CONC * 64 + 64};
    setrlimit(RLIMIT_NOFILE, &rl);

    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    t_start = now();
    t_count = t_start + warmup;
    t_end = t_count + duration;
    for (int i = 0; i < threads; i++) {
        workers[i].conc = conc;
        if (pthread_create(&workers[i].thread, NULL, run, &workers[i]) != 0)
            die("pthread_create");
    }
    uint64_t completed = 0, failed = 0, timeouts = 0, total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(workers[i].thread, NULL);
        completed += workers[i].completed;
        failed += workers[i].failed;
        timeouts += workers[i].timeouts;
        total += workers[i].total;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("completed %llu failed %llu timeouts %llu elapsed %.6f total %llu cpu %.6f\n",
           (unsigned long long)completed, (unsigned long long)failed,
           (unsigned long long)timeouts, duration, (unsigned long long)total, cpu);
    free(workers);
    return 0;
}
