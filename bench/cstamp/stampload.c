/*
 * stampload: drives a STAMP reflector for bench/run.sh's stamp section. It
 * sends unauthenticated 44-octet Session-Sender packets (RFC 8762 §4.2.1)
 * to 127.0.0.1:PORT at RATE packets/s for SECONDS (sendmmsg in batches of
 * 16, paced), reads the replies on a second thread (recvmmsg), and reports
 * the replies per second and the reflector's residence T3 - T2 taken from
 * each reply (both stamped by the reflector's own clock): p50 and p99 in
 * microseconds.
 *
 * usage: stampload PORT RATE SECONDS
 * prints: sent=N received=N rx_pps=X residence_p50_us=X residence_p99_us=X
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 16
#define MAXRES 20000000

static int sock;
static volatile int sending = 1;
static unsigned long received;
static double *res;
static unsigned long nres;
static struct timespec first_rx, last_rx;

static double now_s(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double ntp_s(const unsigned char *p) {
	uint32_t sec, frac;
	memcpy(&sec, p, 4);
	memcpy(&frac, p + 4, 4);
	return (double)ntohl(sec) + ntohl(frac) / 4294967296.0;
}

static void *reader(void *arg) {
	(void)arg;
	static unsigned char bufs[BATCH][2048];
	struct mmsghdr m[BATCH];
	struct iovec iov[BATCH];
	struct timeval tv = {0, 200000};
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	double quiet_since = 0;
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof bufs[i];
			memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
			m[i].msg_hdr.msg_iov = &iov[i];
			m[i].msg_hdr.msg_iovlen = 1;
		}
		int n = recvmmsg(sock, m, BATCH, MSG_WAITFORONE, NULL);
		if (n <= 0) {
			if (!sending) {
				if (quiet_since == 0)
					quiet_since = now_s();
				else if (now_s() - quiet_since > 0.5)
					return NULL;
			}
			continue;
		}
		quiet_since = 0;
		clock_gettime(CLOCK_MONOTONIC, &last_rx);
		if (received == 0)
			first_rx = last_rx;
		for (int i = 0; i < n; i++) {
			if (m[i].msg_len < 44)
				continue;
			received++;
			double r = ntp_s(bufs[i] + 4) - ntp_s(bufs[i] + 16);
			if (nres < MAXRES)
				res[nres++] = r;
		}
	}
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: stampload PORT RATE SECONDS\n");
		return 2;
	}
	double rate = atof(argv[2]), secs = atof(argv[3]);
	res = malloc(sizeof(double) * MAXRES);
	sock = socket(AF_INET, SOCK_DGRAM, 0);
	int buf = 8 << 20;
	setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (connect(sock, (struct sockaddr *)&a, sizeof a) != 0) {
		perror("stampload: connect");
		return 1;
	}
	pthread_t th;
	pthread_create(&th, NULL, reader, NULL);
	static unsigned char pkts[BATCH][44];
	struct mmsghdr m[BATCH];
	struct iovec iov[BATCH];
	unsigned long sent = 0;
	double start = now_s();
	uint32_t seq = 0;
	while (now_s() - start < secs) {
		double due = start + sent / rate;
		double t = now_s();
		if (t < due) {
			if (due - t > 200e-6) {
				struct timespec d = {0, (long)((due - t) * 1e9)};
				nanosleep(&d, NULL);
			}
			continue;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		for (int i = 0; i < BATCH; i++) {
			memset(pkts[i], 0, 44);
			uint32_t s = htonl(seq++);
			memcpy(pkts[i], &s, 4);
			uint32_t sec = htonl((uint32_t)(ts.tv_sec + 2208988800u));
			uint32_t frac = htonl((uint32_t)(((uint64_t)ts.tv_nsec << 32) / 1000000000u));
			memcpy(pkts[i] + 4, &sec, 4);
			memcpy(pkts[i] + 8, &frac, 4);
			pkts[i][13] = 1; /* Error Estimate multiplier 1 */
			iov[i].iov_base = pkts[i];
			iov[i].iov_len = 44;
			memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
			m[i].msg_hdr.msg_iov = &iov[i];
			m[i].msg_hdr.msg_iovlen = 1;
		}
		int n = sendmmsg(sock, m, BATCH, 0);
		if (n > 0)
			sent += n;
	}
	sending = 0;
	pthread_join(th, NULL);
	double span = (last_rx.tv_sec - first_rx.tv_sec) + (last_rx.tv_nsec - first_rx.tv_nsec) / 1e9;
	double p50 = 0, p99 = 0;
	if (nres > 0) {
		qsort(res, nres, sizeof res[0], cmp);
		p50 = res[nres / 2] * 1e6;
		p99 = res[nres * 99 / 100] * 1e6;
	}
	printf("sent=%lu received=%lu rx_pps=%.0f residence_p50_us=%.1f residence_p99_us=%.1f\n", sent, received,
	       span > 0 ? received / span : 0, p50, p99);
	return 0;
}
