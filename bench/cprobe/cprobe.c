/*
 * cprobe: the floor that the exporter's continuous TCP probing is compared
 * with (bench/run.sh continuous-floor). A minimal C prober with the I/O
 * pattern of the exporter's epoll loop (internal/source/continuous/loop*.go):
 * N non-blocking TCP connections to one end host on 127.0.0.1, each probing
 * once per interval at its own phase (entry i at i·interval/N), one thread,
 * one level-triggered epoll in which every socket stays registered for
 * EPOLLIN. A turn of the loop: epoll_pwait2 with a nanosecond timeout until
 * the next slot (or a reply), one clock_gettime(CLOCK_MONOTONIC), the
 * replies ready (recvmsg with the kernel's receive stamp, SO_TIMESTAMPNS),
 * then every probe due within the early margin (min(2 ms, interval/50), the
 * exporter's rule): write(2) of a 40-byte request, then getsockopt(TCP_INFO).
 * A probe is done when its 168-byte reply is in.
 *
 * What it leaves out is what the floor is: no deadline heap (the slots come
 * in phase order, a cursor walks them), no reply deadlines (an entry whose
 * reply has not come by its next slot skips that slot and counts a miss),
 * no parsing, no records.
 *
 * usage: cprobe [-i INTERVAL_MS] [-T] [-S] [-D] PORT N
 *   -T  no getsockopt(TCP_INFO) per probe
 *   -S  no SO_TIMESTAMPNS: a plain read(2) of the reply
 *   -D  deferred replies, a what-if the exporter does not do: the loop
 *       sleeps until the next slot only (clock_nanosleep), not until a
 *       reply, and takes the replies ready then (epoll_pwait2 without
 *       waiting); the kernel's receive stamp still says when each came
 * SIGUSR1 prints "probes=P misses=M errors=E turns=T" (a line, flushed);
 * SIGTERM or SIGINT prints it with the process's rusage, and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REQ_BYTES 40
#define REPLY_BYTES 168
#define MAX_EVENTS 256

struct entry {
	int fd;
	int waiting;   /* a request is out, its reply not complete */
	int got;       /* bytes of the reply so far */
	int64_t due;   /* next slot, CLOCK_MONOTONIC ns */
	int64_t sent;  /* when the request went out */
	struct timespec stamp; /* the kernel's receive stamp of the last read */
};

static volatile sig_atomic_t stop, report;
static void on_term(int sig) { (void)sig; stop = 1; }
static void on_usr1(int sig) { (void)sig; report = 1; }

static struct entry *entries;
static int *by_fd; /* fd -> entry index, -1 for none */
static long n_entries;
static unsigned long long probes, misses, errors, turns;
static int64_t rtt_sum_ns; /* read so the work is not optimised away */

static int64_t mono_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void print_counts(FILE *f) {
	fprintf(f, "probes=%llu misses=%llu errors=%llu turns=%llu\n", probes, misses, errors, turns);
	fflush(f);
}

static int epoll_wait_ns(int ep, struct epoll_event *ev, int max, int64_t ns) {
	struct timespec ts = {ns / 1000000000, ns % 1000000000};
	return (int)syscall(SYS_epoll_pwait2, ep, ev, max, &ts, NULL, (size_t)8);
}

static void fail(struct entry *e) {
	errors++;
	close(e->fd);
	by_fd[e->fd] = -1;
	e->fd = -1;
	e->waiting = 0;
}

/* read_reply takes what the socket holds of the entry's reply. */
static void read_reply(struct entry *e, int stamped, int64_t now) {
	char buf[4096];
	char ctl[CMSG_SPACE(sizeof(struct timespec))];
	ssize_t n;
	if (stamped) {
		struct iovec iov = {buf, sizeof buf};
		struct msghdr msg = {0};
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = ctl;
		msg.msg_controllen = sizeof ctl;
		n = recvmsg(e->fd, &msg, 0);
		if (n > 0)
			for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h))
				if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SO_TIMESTAMPNS)
					memcpy(&e->stamp, CMSG_DATA(h), sizeof e->stamp);
	} else {
		n = read(e->fd, buf, sizeof buf);
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		fail(e);
		return;
	}
	e->got += (int)n;
	if (e->waiting && e->got >= REPLY_BYTES) {
		e->got -= REPLY_BYTES;
		e->waiting = 0;
		probes++;
		rtt_sum_ns += now - e->sent;
	}
}

/* probe sends the entry's request, then reads TCP_INFO as the exporter does. */
static void probe(struct entry *e, int tcpinfo, int64_t now) {
	static const char req[REQ_BYTES];
	if (e->fd < 0)
		return;
	if (e->waiting) {
		misses++;
		return;
	}
	ssize_t n = write(e->fd, req, sizeof req);
	if (n != (ssize_t)sizeof req) {
		fail(e);
		return;
	}
	if (tcpinfo) {
		struct tcp_info ti;
		socklen_t len = sizeof ti;
		if (getsockopt(e->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) {
			fail(e);
			return;
		}
	}
	e->waiting = 1;
	e->sent = now;
}

static int dial(int port) {
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (fd < 0)
		return -1;
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		close(fd);
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

int main(int argc, char **argv) {
	int64_t interval = 1000000000;
	int tcpinfo = 1, stamped = 1, deferred = 0, opt;
	while ((opt = getopt(argc, argv, "i:TSD")) != -1) {
		switch (opt) {
		case 'i': interval = atoll(optarg) * 1000000; break;
		case 'T': tcpinfo = 0; break;
		case 'S': stamped = 0; break;
		case 'D': deferred = 1; break;
		default: goto usage;
		}
	}
	if (argc - optind != 2 || interval <= 0) {
	usage:
		fprintf(stderr, "usage: cprobe [-i INTERVAL_MS] [-T] [-S] [-D] PORT N\n");
		return 2;
	}
	int port = atoi(argv[optind]);
	n_entries = atol(argv[optind + 1]);
	if (n_entries <= 0) {
		fprintf(stderr, "cprobe: N must be positive, not %s\n", argv[optind + 1]);
		return 2;
	}
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if ((rlim_t)n_entries + 16 > rl.rlim_cur) {
		fprintf(stderr, "cprobe: %ld connections need more descriptors than the limit %llu (ulimit -n)\n", n_entries, (unsigned long long)rl.rlim_cur);
		return 1;
	}
	struct sigaction sa = {0};
	sa.sa_handler = on_term; /* no SA_RESTART: the wait returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	entries = calloc(n_entries, sizeof *entries);
	by_fd = malloc(sizeof *by_fd * (rl.rlim_cur + 1));
	if (!entries || !by_fd) {
		fprintf(stderr, "cprobe: out of memory\n");
		return 1;
	}
	memset(by_fd, 0xff, sizeof *by_fd * (rl.rlim_cur + 1));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		perror("cprobe: epoll_create1");
		return 1;
	}
	int one = 1;
	for (long i = 0; i < n_entries; i++) {
		struct entry *e = &entries[i];
		e->fd = dial(port);
		if (e->fd < 0) {
			fprintf(stderr, "cprobe: connection %ld of %ld to 127.0.0.1:%d: %s\n", i + 1, n_entries, port, strerror(errno));
			return 1;
		}
		if (stamped)
			setsockopt(e->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = e->fd};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev) < 0) {
			perror("cprobe: epoll_ctl");
			return 1;
		}
		by_fd[e->fd] = (int)i;
	}
	/* Slots: entry i at origin + i·interval/N + k·interval, walked in order. */
	int64_t origin = mono_ns() + interval / 10;
	for (long i = 0; i < n_entries; i++)
		entries[i].due = origin + (int64_t)((__int128)i * interval / n_entries);
	int64_t early = interval / 50 < 2000000 ? interval / 50 : 2000000;
	long cursor = 0;
	printf("cprobe: %ld connections to 127.0.0.1:%d, interval %lld ms, TCP_INFO %s, SO_TIMESTAMPNS %s, replies %s\n",
	       n_entries, port, (long long)(interval / 1000000), tcpinfo ? "on" : "off", stamped ? "on" : "off", deferred ? "deferred to the next slot" : "at once");
	fflush(stdout);

	struct epoll_event events[MAX_EVENTS];
	int64_t now = mono_ns();
	while (!stop) {
		int64_t wait = entries[cursor].due - now;
		if (deferred && wait > 0) {
			struct timespec ts = {wait / 1000000000, wait % 1000000000};
			clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
			wait = 0;
		}
		int n = epoll_wait_ns(ep, events, MAX_EVENTS, wait > 0 ? wait : 0);
		if (n < 0 && errno != EINTR) {
			perror("cprobe: epoll_pwait2");
			return 1;
		}
		turns++;
		now = mono_ns();
		for (int i = 0; i < n; i++) {
			int k = by_fd[events[i].data.fd];
			if (k >= 0)
				read_reply(&entries[k], stamped, now);
		}
		while (entries[cursor].due <= now + early) {
			struct entry *e = &entries[cursor];
			probe(e, tcpinfo, now);
			e->due += interval;
			if (++cursor == n_entries)
				cursor = 0;
		}
		if (report) {
			report = 0;
			print_counts(stdout);
		}
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	print_counts(stdout);
	printf("cprobe: user %ld.%06ld s, system %ld.%06ld s, mean round trip %.1f us\n",
	       (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec,
	       probes ? rtt_sum_ns / 1e3 / probes : 0.0);
	return 0;
}
