/* loadgen: a closed-loop load generator for Postfix table servers (vmaild's benchmark).
 *
 * It behaves like many Postfix processes at once: every connection is persistent and
 * strictly sequential -- it sends one request, waits for the complete reply, then sends the
 * next (docs/PROTOCOLS.md 1.4 and 2.4: one outstanding request per connection, no
 * pipelining). All connections are driven by one thread with epoll, so on a 2-core machine
 * the generator takes one core at most and leaves the other to the server under test.
 *
 *   loadgen -m tcp|socketmap -H 127.0.0.1 -p PORT -c CONNS -d SECONDS -k KEYFILE
 *           [-M MAPNAME] [-n TOTAL]
 *
 * Keys are read from KEYFILE, one a line, and handed out round-robin from one cursor shared
 * by all connections, so with -n equal to the number of keys every key is asked exactly once.
 * tcp mode sends keys as they are: they must already be hex-quoted (PROTOCOLS.md 1.2); the
 * benchmark's keys are plain addresses, which need no quoting.
 *
 * Prints one JSON object: requests, seconds, rps, p50_us, p90_us, p99_us, max_us, found,
 * notfound, errors, cpu_seconds (this process's own user+system time, to show it is not
 * the bottleneck).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 1000000 /* latency histogram: 1 us buckets up to 1 s, then one overflow bucket */
#define BUFSZ 8192      /* tcp: replies are < 4096 bytes (1.3); ours are far below BUFSZ */

struct conn {
    int fd;
    size_t have;               /* bytes of the reply received so far */
    struct timespec sent;      /* when the outstanding request was written */
    char buf[BUFSZ];
};

static int sockmap;            /* 0: tcp_table, 1: socketmap */
static const char *mapname = "mailboxes";
static char **keys;
static size_t nkeys, cursor;
static unsigned long long limit, sent, done, found, notfound, errors, overflow;
static uint32_t *hist;
static double max_us;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void load_keys(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    size_t cap = 1024, len;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    keys = malloc(cap * sizeof *keys);
    while ((n = getline(&line, &lcap, f)) > 0) {
        len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (nkeys == cap) keys = realloc(keys, (cap *= 2) * sizeof *keys);
        keys[nkeys++] = strndup(line, len);
    }
    free(line);
    fclose(f);
    if (!nkeys) { fprintf(stderr, "%s: no keys\n", path); exit(2); }
}

/* Write the next request on c. Returns 0 when there is nothing more to send. */
static int send_next(struct conn *c) {
    char req[BUFSZ];
    int len;
    if (limit && sent >= limit) return 0;
    const char *key = keys[cursor++ % nkeys];
    if (sockmap) /* netstring "<len>:<map> <key>," with the length in bytes (2.1, 2.2) */
        len = snprintf(req, sizeof req, "%zu:%s %s,", strlen(mapname) + 1 + strlen(key),
                       mapname, key);
    else         /* "get SP <quoted key> LF" (1.2) */
        len = snprintf(req, sizeof req, "get %s\n", key);
    if (len <= 0 || len >= (int)sizeof req) { errors++; return 0; }
    clock_gettime(CLOCK_MONOTONIC, &c->sent);
    /* A request is far smaller than the socket buffer, and the previous reply has been
     * read in full, so a short write means the connection is broken. */
    if (write(c->fd, req, (size_t)len) != len) { errors++; return 0; }
    sent++;
    return 1;
}

/* Length of the complete reply at the start of c->buf; 0 if incomplete, -1 if malformed. */
static long reply_length(const struct conn *c) {
    if (!sockmap) { /* one line ending in LF (1.3) */
        const char *nl = memchr(c->buf, '\n', c->have);
        return nl ? nl - c->buf + 1 : 0;
    }
    size_t i = 0, len = 0; /* netstring: ASCII digits, ':', payload, ',' (2.1) */
    while (i < c->have && c->buf[i] >= '0' && c->buf[i] <= '9') {
        len = len * 10 + (size_t)(c->buf[i++] - '0');
        if (len > BUFSZ) return -1;
    }
    if (i == c->have) return 0;
    if (c->buf[i] != ':') return -1;
    if (c->have < i + 1 + len + 1) return 0;
    if (c->buf[i + 1 + len] != ',') return -1;
    return (long)(i + 1 + len + 1);
}

/* Count the reply: tcp 2xx found / 5xx not found (1.3); socketmap "OK <data>" /
 * "NOTFOUND" (2.3). Anything else (400, TEMP, PERM...) is an error. */
static void classify(const struct conn *c) {
    if (!sockmap) {
        if (c->buf[0] == '2') found++;
        else if (c->buf[0] == '5') notfound++;
        else errors++;
        return;
    }
    const char *p = (const char *)memchr(c->buf, ':', c->have) + 1;
    if (!strncmp(p, "OK ", 3)) found++;
    else if (!strncmp(p, "NOTFOUND", 8)) notfound++;
    else errors++;
}

static void record(const struct conn *c) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double us = (t.tv_sec - c->sent.tv_sec) * 1e6 + (t.tv_nsec - c->sent.tv_nsec) / 1e3;
    if (us > max_us) max_us = us;
    if (us < HIST_US) hist[(size_t)us]++;
    else overflow++;
    done++;
}

static double percentile(double q) {
    unsigned long long want = (unsigned long long)(q * done + 0.5), seen = 0;
    if (want == 0) want = 1;
    for (size_t us = 0; us < HIST_US; us++)
        if ((seen += hist[us]) >= want) return (double)us;
    return max_us;
}

static int dial(const char *host, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) { perror("socket"); exit(2); }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); exit(2); }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd; /* left blocking: we only read after epoll says so, and writes are tiny */
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *keyfile = NULL;
    int port = 0, nconn = 1, opt;
    double duration = 5;
    while ((opt = getopt(argc, argv, "m:H:p:c:d:k:M:n:")) != -1) {
        switch (opt) {
        case 'm': sockmap = !strcmp(optarg, "socketmap"); break;
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconn = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'k': keyfile = optarg; break;
        case 'M': mapname = optarg; break;
        case 'n': limit = strtoull(optarg, NULL, 10); break;
        default: goto usage;
        }
    }
    if (!port || !keyfile || nconn < 1) {
usage:
        fprintf(stderr, "usage: %s -m tcp|socketmap -H host -p port -c conns -d seconds "
                        "-k keyfile [-M map] [-n total]\n", argv[0]);
        return 2;
    }
    load_keys(keyfile);
    hist = calloc(HIST_US, sizeof *hist);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(0), active = 0;
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = dial(host, port);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    double start = now_s(), end = start + duration, stop;
    for (int i = 0; i < nconn; i++) active += send_next(&conns[i]);
    struct epoll_event evs[256];
    while (active > 0 && (stop = now_s()) < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 2; }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            ssize_t got = read(c->fd, c->buf + c->have, BUFSZ - c->have);
            if (got <= 0) {             /* EOF or error with a request outstanding */
                if (got < 0 && errno == EINTR) continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                active--;
                continue;
            }
            c->have += (size_t)got;
            long len = reply_length(c);
            if (len == 0 && c->have < BUFSZ) continue; /* wait for the rest */
            if (len != (long)c->have) { /* malformed, too long, or an unasked-for extra */
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                active--;
                continue;
            }
            record(c);
            classify(c);
            c->have = 0;
            if (now_s() >= end || !send_next(c)) active--;
        }
    }
    stop = now_s();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    double secs = stop - start;
    printf("{\"mode\": \"%s\", \"connections\": %d, \"requests\": %llu, \"seconds\": %.4f, "
           "\"rps\": %.1f, \"p50_us\": %.0f, \"p90_us\": %.0f, \"p99_us\": %.0f, "
           "\"max_us\": %.0f, \"found\": %llu, \"notfound\": %llu, \"errors\": %llu, "
           "\"over_1s\": %llu, \"cpu_seconds\": %.3f}\n",
           sockmap ? "socketmap" : "tcp", nconn, done, secs, secs > 0 ? done / secs : 0.0,
           percentile(0.50), percentile(0.90), percentile(0.99), max_us, found, notfound,
           errors, overflow, cpu);
    return 0;
}
