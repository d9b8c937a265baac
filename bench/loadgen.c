/*
 * loadgen: the benchmark's load generator, for line-framed echo and
 * broadcast servers on loopback. One thread, epoll, non-blocking sockets.
 *
 *   loadgen MODE --port P [options]
 *
 * Modes (every reply is checked byte for byte against what was sent):
 *   rr         request/response: each connection sends one message and
 *              waits for its echo before sending the next.
 *   pipeline   each connection sends a burst of --burst messages in one
 *              write and waits for all of their echoes before the next.
 *   idle       opens --conns connections (each answers one round trip),
 *              prints a "ready" line, waits for a line on stdin, closes.
 *              With --heartbeats 1, each connection answers every empty
 *              line the server sends (a heartbeat) with one, as a client
 *              with the server's --heartbeat would send its own.
 *   broadcast  --conns receivers and one sender; after a warm-up, sends
 *              --count messages one at a time and times each until the
 *              last receiver has it.
 *   storm      opens --conns connections, prints "ready", and from then on
 *              reconnects every connection the server drops, with a
 *              doubling backoff and jitter, until all are back (each
 *              answered one round trip), then reports how long that took.
 *   churn      --conns connections, at most --open-concurrency at a time,
 *              each connecting, sending one message, reading its echo and
 *              closing; reports how many per second.
 *
 * Every connection is opened and answered before the measurement starts
 * (at most --open-concurrency at a time), and closed with a reset
 * (SO_LINGER 0) so that no TIME_WAIT ties up loopback ports between runs.
 * --sources N binds connection i to 127.0.0.(2 + i % N) before connecting
 * (IP_BIND_ADDRESS_NO_PORT: the port is picked at connect), so that more
 * connections than the ephemeral port range holds can reach one server.
 * --flood N (rr) adds N connections that, from the start of the warm-up to
 * the end of the window, write empty lines ("\n") as fast as the server
 * takes them, and read and drop whatever comes back; what the server read
 * of them in the window is counted from the flooders' send queues and the
 * server's receive queues (/proc/net/tcp). --server-pid P reads
 * the server's CPU time from /proc/P/stat at the start and end of what is
 * measured. Output: one JSON object per line on stdout. Times are
 * CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic() on Linux.
 * --hello PREFIX makes connection i send "hello PREFIX-i" first, for a
 * server that names its clients (--client-id hello); with --expect-first
 * LINE each connection must then receive LINE (and its newline) before the
 * replies to what it sends (a message queued for it).
 * Every phase is bounded by --time-limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { RR, PIPELINE, IDLE, BROADCAST, STORM, CHURN };
enum state { FREE, CONNECTING, OPEN, WAITING };

#define STDIN_TAG UINT32_MAX
#define MAX_SEQ 4096
#define MAX_BINS 1200 /* of 100 ms: two minutes */
#define RXBUF (256 * 1024)
#define FLOODBUF (64 * 1024)

struct conn {
	int fd;
	enum state state;
	int wantOut;       /* EPOLLOUT is in the interest set */
	int confirmed;     /* answered one round trip on this socket */
	int down;          /* storm: lost since "ready", not back yet */
	int everDown;      /* storm: lost at least once since "ready" */
	int fails;         /* storm: failed attempts in a row */
	int heapIndex;     /* storm: place in the retry heap, -1 if none */
	int busy;          /* an exchange is under way */
	int flooder;       /* rr --flood: writes empty lines, drops what it reads */
	unsigned char *pattern; /* what one exchange sends, and expects back */
	size_t patternLen;
	size_t txOff;  /* bytes of pattern written */
	size_t rxLeft; /* bytes still owed back */
	size_t rxPos;  /* offset in pattern of the next expected byte */
	double sentAt;
	double due;    /* storm: next attempt */
	long runs;     /* exchanges completed in the run phase */
	char line[64]; /* broadcast receivers: the partial line */
	int lineLen;
	size_t firstPos; /* --expect-first: bytes of it received so far */
};

static struct {
	enum mode mode;
	int port;
	int conns;
	int size;
	int burst;
	double duration, warmup, timeLimit;
	int openConcurrency;
	int count;
	double retryInitial, retryMax;
	unsigned seed;
	int sources;
	int flood;
	int serverPid;
	const char *hello; /* --hello PREFIX: send "hello PREFIX-<i>" first */
	const char *expectFirst; /* --expect-first LINE: received before any reply */
	size_t expectFirstLen;   /* with its newline */
	int heartbeats;
} opt = {
    .port = 0,
    .conns = 1,
    .size = 32,
    .burst = 64,
    .duration = 3.0,
    .warmup = 0.5,
    .timeLimit = 60.0,
    .openConcurrency = 256,
    .count = 5,
    .retryInitial = 0.1,
    .retryMax = 1.0,
    .seed = 1,
};

static int ep;
static struct conn *cs;
static int nconns; /* cs[0 .. nconns-1]; broadcast adds the sender last */
static struct sockaddr_in server;
static unsigned char *rxbuf;
static unsigned char floodBuf[FLOODBUF];

/* Counters for the result line. */
static long errors, connectErrors, dataErrors, closedEarly, attempts, refused;
static char firstError[160];
static double openSeconds;
static double serverCpu = -1; /* seconds of server CPU in what was measured */

/* Phase bookkeeping. */
static int opening = 1; /* still in the open phase */
static int nextToOpen, inFlight, nConfirmed;
static int running;      /* rr/pipeline: start new exchanges */
static double windowStart, windowEnd;
static long windowOps;   /* messages answered inside the window */
static long outstanding; /* exchanges under way */
static uint32_t *lat;    /* rr latencies in the window, ns */
static size_t nlat, latCap;
static int flooding;         /* flooders write */
static long floodBytes;      /* empty lines written inside the window */
static long floodQueued0;    /* flood bytes in the kernel at the window's start */
static int floodCounting;    /* between the window's two counts of them */
static long floodReplyBytes; /* bytes the flooders got back, all told */
static long floodersLost;    /* flooders the server disconnected */
static long heartbeatsIn;    /* idle --heartbeats: empty lines received, and answered */

/* Churn. */
static int nChurned;

/* Broadcast. */
static int counts[MAX_SEQ];
static double firstAt[MAX_SEQ], lastAt[MAX_SEQ];

/* Storm. */
static int *heap;
static int heapLen;
static int nBack, nDownEver;
static double firstDown, lastBack, firstBack;
static int bins[MAX_BINS];

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpuSeconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* User and system CPU time of process pid, from /proc/pid/stat; -1 if it
 * cannot be read. */
static double processCpuSeconds(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strrchr(buf, ')'); /* the command may hold spaces */
	unsigned long utime, stime;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
			 &stime) != 2)
		return -1;
	return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double serverCpuSeconds(void)
{
	return opt.serverPid > 0 ? processCpuSeconds(opt.serverPid) : -1;
}

static void noteError(long *counter, const char *what, int id, int err)
{
	(*counter)++;
	errors++;
	if (!firstError[0])
		snprintf(firstError, sizeof firstError, "%s (connection %d): %s", what, id,
			 err ? strerror(err) : "-");
}

static void setInterest(struct conn *c, int out)
{
	if (c->wantOut == out)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0),
				 .data.u32 = (uint32_t)(c - cs)};
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->wantOut = out;
}

/* Close with a reset: no TIME_WAIT on either side. */
static void closeConn(struct conn *c)
{
	if (c->fd >= 0) {
		struct linger lg = {1, 0};
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		close(c->fd);
	}
	c->fd = -1;
	c->state = FREE;
	c->busy = 0;
	if (c->confirmed)
		nConfirmed--;
	c->confirmed = 0;
	c->lineLen = 0;
}

/* The message of connection id: "c<id> " padded with letters, then '\n'. */
static void makePattern(struct conn *c, int id, int size, int burst)
{
	c->patternLen = (size_t)size * (size_t)burst;
	c->pattern = malloc(c->patternLen);
	if (!c->pattern) {
		perror("malloc");
		exit(2);
	}
	for (int m = 0; m < burst; m++) {
		unsigned char *p = c->pattern + (size_t)m * (size_t)size;
		int n = snprintf((char *)p, (size_t)size, "c%d ", id);
		if (n >= size)
			n = size - 1;
		for (int i = n; i < size - 1; i++)
			p[i] = (unsigned char)('a' + (i + m) % 26);
		p[size - 1] = '\n';
	}
}

/* Heap of waiting storm clients, by due time. */
static void heapSwap(int i, int j)
{
	int a = heap[i], b = heap[j];
	heap[i] = b;
	heap[j] = a;
	cs[b].heapIndex = i;
	cs[a].heapIndex = j;
}

static void heapPush(int id)
{
	int i = heapLen++;
	heap[i] = id;
	cs[id].heapIndex = i;
	while (i > 0) {
		int parent = (i - 1) / 2;
		if (cs[heap[parent]].due <= cs[heap[i]].due)
			break;
		heapSwap(i, parent);
		i = parent;
	}
}

static int heapPop(void)
{
	int top = heap[0];
	heapLen--;
	if (heapLen > 0) {
		heap[0] = heap[heapLen];
		cs[heap[0]].heapIndex = 0;
		int i = 0;
		for (;;) {
			int l = 2 * i + 1, r = l + 1, m = i;
			if (l < heapLen && cs[heap[l]].due < cs[heap[m]].due)
				m = l;
			if (r < heapLen && cs[heap[r]].due < cs[heap[m]].due)
				m = r;
			if (m == i)
				break;
			heapSwap(i, m);
			i = m;
		}
	}
	cs[top].heapIndex = -1;
	return top;
}

/* The wait before the n-th retry in a row: a random time between half and
 * all of min(initial * 2^n, max), as tcpcomm's own client does. */
static void scheduleRetry(struct conn *c)
{
	double base = opt.retryInitial * pow(2.0, c->fails);
	if (base > opt.retryMax)
		base = opt.retryMax;
	double jitter = 0.5 + 0.5 * ((double)rand() / (double)RAND_MAX);
	c->state = WAITING;
	c->due = now() + base * jitter;
	c->fails++;
	heapPush((int)(c - cs));
}

static void startExchange(struct conn *c);

static void connectFailed(struct conn *c, int err);

static void startConnect(struct conn *c)
{
	int id = (int)(c - cs);
	attempts++;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		connectFailed(c, errno);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (opt.sources > 0) {
		struct sockaddr_in local = {.sin_family = AF_INET};
		local.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (uint32_t)(id % opt.sources));
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
			int err = errno;
			close(fd);
			connectFailed(c, err);
			return;
		}
	}
	c->fd = fd;
	c->state = CONNECTING;
	c->wantOut = 1;
	c->busy = 0;
	c->lineLen = 0;
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)id};
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)
		connectFailed(c, errno);
}

/* A connection attempt failed: in a storm, try again later; otherwise it is
 * an error. */
static void connectFailed(struct conn *c, int err)
{
	closeConn(c);
	if (opt.mode == STORM && !opening) {
		refused++;
		scheduleRetry(c);
		return;
	}
	noteError(&connectErrors, "connect", (int)(c - cs), err);
	if (opening)
		inFlight--;
}

/* An open connection went away (EOF or error). */
static void lost(struct conn *c, int err)
{
	int id = (int)(c - cs);
	int wasUp = c->confirmed;
	int wasBusy = c->busy;
	closeConn(c);
	if (opt.mode == STORM && !opening) {
		if (wasUp) {
			if (!c->everDown) {
				c->everDown = 1;
				if (nDownEver++ == 0)
					firstDown = now();
			} else {
				nBack--; /* it had come back, and dropped again */
			}
			c->down = 1;
			c->fails = 0;
		}
		scheduleRetry(c);
		return;
	}
	if (opening) {
		noteError(&connectErrors, "closed while opening", id, err);
		inFlight--;
		return;
	}
	if (c->flooder) {
		floodersLost++;
		return;
	}
	if (wasBusy)
		outstanding--;
	noteError(&closedEarly, "connection lost", id, err);
}

static void flush(struct conn *c)
{
	while (c->txOff < c->patternLen) {
		ssize_t n = send(c->fd, c->pattern + c->txOff, c->patternLen - c->txOff, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				setInterest(c, 1);
				return;
			}
			if (errno == EINTR)
				continue;
			lost(c, errno);
			return;
		}
		c->txOff += (size_t)n;
	}
	setInterest(c, 0);
}

static void startExchange(struct conn *c)
{
	c->txOff = 0;
	c->rxLeft = c->patternLen;
	c->rxPos = 0;
	c->busy = 1;
	c->sentAt = now();
	flush(c);
}

static void exchangeDone(struct conn *c)
{
	double t = now();
	c->busy = 0;
	if (!c->confirmed) {
		c->confirmed = 1;
		nConfirmed++;
		if (opening) {
			inFlight--;
			if (opt.mode == CHURN) {
				nChurned++;
				closeConn(c);
			}
			return;
		}
		if (opt.mode == STORM && c->down) {
			c->down = 0;
			c->fails = 0;
			c->runs++;
			nBack++;
			if (nBack == 1 || t < firstBack)
				firstBack = t;
			lastBack = t;
			int bin = (int)((t - firstDown) / 0.1);
			if (bin >= 0 && bin < MAX_BINS)
				bins[bin]++;
		}
		return;
	}
	/* rr and pipeline */
	outstanding--;
	if (t >= windowStart && t < windowEnd) {
		windowOps += opt.mode == PIPELINE ? opt.burst : 1;
		if (opt.mode == RR && nlat < latCap) {
			double ns = (t - c->sentAt) * 1e9;
			lat[nlat++] = ns > 4e9 ? 4000000000u : (uint32_t)ns;
		}
	}
	c->runs++;
	if (running) {
		outstanding++;
		startExchange(c);
	}
}

/* idle --heartbeats: what an answered connection receives is heartbeats
 * only; each is answered with one. */
static void heartbeatData(struct conn *c, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != '\n') {
			noteError(&dataErrors, "not a heartbeat", (int)(c - cs), 0);
			return;
		}
	}
	heartbeatsIn += (long)n;
	size_t left = n;
	while (left > 0) {
		size_t chunk = left < sizeof floodBuf ? left : sizeof floodBuf;
		ssize_t w = send(c->fd, floodBuf, chunk, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			noteError(&dataErrors, "cannot answer a heartbeat", (int)(c - cs), errno);
			return;
		}
		left -= (size_t)w;
	}
}

static void checkData(struct conn *c, const unsigned char *p, size_t n)
{
	if (c->firstPos < opt.expectFirstLen) {
		size_t want = opt.expectFirstLen - c->firstPos, take = n < want ? n : want;
		for (size_t i = 0; i < take; i++) {
			size_t at = c->firstPos + i;
			unsigned char expected = at < opt.expectFirstLen - 1 ? (unsigned char)opt.expectFirst[at] : '\n';
			if (p[i] != expected) {
				noteError(&dataErrors, "the first line differs from --expect-first", (int)(c - cs), 0);
				break;
			}
		}
		c->firstPos += take;
		p += take;
		n -= take;
		if (n == 0)
			return;
	}
	if (n > c->rxLeft) {
		noteError(&dataErrors, "more data than was sent", (int)(c - cs), 0);
		n = c->rxLeft;
	}
	size_t done = 0;
	while (done < n) {
		size_t chunk = c->patternLen - c->rxPos;
		if (chunk > n - done)
			chunk = n - done;
		if (memcmp(p + done, c->pattern + c->rxPos, chunk) != 0) {
			noteError(&dataErrors, "reply differs from the message", (int)(c - cs), 0);
			break;
		}
		done += chunk;
		c->rxPos = (c->rxPos + chunk) % c->patternLen;
	}
	c->rxLeft -= n;
	if (c->rxLeft == 0 && c->busy)
		exchangeDone(c);
}

/* Broadcast receivers: lines "b<seq> ...". */
static void broadcastData(struct conn *c, const unsigned char *p, size_t n)
{
	double t = now();
	for (size_t i = 0; i < n; i++) {
		if (p[i] != '\n') {
			if (c->lineLen < (int)sizeof c->line - 1)
				c->line[c->lineLen++] = (char)p[i];
			continue;
		}
		c->line[c->lineLen] = 0;
		c->lineLen = 0;
		long seq = c->line[0] == 'b' ? strtol(c->line + 1, NULL, 10) : -1;
		if (seq < 0 || seq >= MAX_SEQ) {
			noteError(&dataErrors, "unexpected broadcast line", (int)(c - cs), 0);
			continue;
		}
		if (counts[seq]++ == 0)
			firstAt[seq] = t;
		if (counts[seq] == opt.conns)
			lastAt[seq] = t;
	}
}

/* Bytes the flooders wrote that the server has not read yet: in their own
 * send queues (SIOCOUTQ) and in the server's receive queues (rx_queue in
 * /proc/net/tcp, matched by the flooders' ports). */
static long floodQueued(void)
{
	long queued = 0;
	int ports[16], nports = 0;
	for (int i = opt.conns; i < nconns && nports < 16; i++) {
		struct conn *c = &cs[i];
		if (!c->flooder || c->fd < 0)
			continue;
		int outq = 0;
		if (ioctl(c->fd, SIOCOUTQ, &outq) == 0)
			queued += outq;
		struct sockaddr_in local;
		socklen_t len = sizeof local;
		if (getsockname(c->fd, (struct sockaddr *)&local, &len) == 0)
			ports[nports++] = ntohs(local.sin_port);
	}
	FILE *f = fopen("/proc/net/tcp", "r");
	if (!f)
		return queued;
	char line[256];
	while (fgets(line, sizeof line, f)) {
		unsigned laddr, lport, raddr, rport, st;
		unsigned long txq, rxq;
		if (sscanf(line, " %*d: %x:%x %x:%x %x %lx:%lx", &laddr, &lport, &raddr, &rport, &st,
			   &txq, &rxq) != 7)
			continue;
		if ((int)lport != opt.port)
			continue;
		for (int k = 0; k < nports; k++)
			if ((int)rport == ports[k])
				queued += (long)rxq;
	}
	fclose(f);
	return queued;
}

/* A flooder: write empty lines until the socket is full. */
static void flood(struct conn *c)
{
	if (!flooding) {
		setInterest(c, 0);
		return;
	}
	for (int k = 0; k < 64; k++) { /* at most 4 MiB a turn */
		ssize_t n = send(c->fd, floodBuf, FLOODBUF, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				setInterest(c, 1);
				return;
			}
			if (errno == EINTR)
				continue;
			lost(c, errno);
			return;
		}
		if (floodCounting)
			floodBytes += n;
	}
	setInterest(c, 1);
}

static void handleFlooder(struct conn *c, uint32_t events)
{
	if (events & EPOLLOUT)
		flood(c);
	if (c->state != OPEN)
		return;
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
		ssize_t n = recv(c->fd, rxbuf, RXBUF, 0);
		if (n > 0)
			floodReplyBytes += n;
		else if (n == 0)
			lost(c, 0);
		else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			lost(c, errno);
	}
}

/* --hello: name the new connection i "PREFIX-i" before its first exchange
 * (a server with --client-id hello). The socket's buffer is empty, so the
 * short line goes in one send. */
static int sendHello(struct conn *c)
{
	char line[160];
	int n = snprintf(line, sizeof line, "hello %s-%d\n", opt.hello, (int)(c - cs));
	if (send(c->fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
		lost(c, errno);
		return 0;
	}
	return 1;
}

static void handle(uint32_t id, uint32_t events)
{
	struct conn *c = &cs[id];
	if (c->state == CONNECTING) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			connectFailed(c, err);
			return;
		}
		c->state = OPEN;
		setInterest(c, 0);
		if (opt.hello && !sendHello(c))
			return;
		if (opt.mode == BROADCAST) {
			c->confirmed = 1;
			nConfirmed++;
			inFlight--;
		} else {
			startExchange(c);
		}
		return;
	}
	if (c->state != OPEN)
		return;
	if (c->flooder && !opening) {
		handleFlooder(c, events);
		return;
	}
	if (events & EPOLLOUT)
		flush(c);
	if (c->state != OPEN)
		return;
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
		ssize_t n = recv(c->fd, rxbuf, RXBUF, 0);
		if (n > 0) {
			if (opt.mode == BROADCAST)
				broadcastData(c, rxbuf, (size_t)n);
			else if (opt.heartbeats && c->confirmed && !c->busy)
				heartbeatData(c, rxbuf, (size_t)n);
			else
				checkData(c, rxbuf, (size_t)n);
		} else if (n == 0) {
			lost(c, 0);
		} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			lost(c, errno);
		}
	}
}

static struct epoll_event events[1024];

/* One turn of the loop: wait at most timeout seconds. Returns 1 if stdin
 * has a line (or closed). */
static int turn(double timeout)
{
	int ms = (int)ceil(timeout * 1000.0);
	if (ms < 0)
		ms = 0;
	if (opt.mode == STORM && !opening && heapLen > 0) {
		double wait = cs[heap[0]].due - now();
		int hms = wait <= 0 ? 0 : (int)ceil(wait * 1000.0);
		if (hms < ms)
			ms = hms;
	}
	int n = epoll_wait(ep, events, 1024, ms);
	int input = 0;
	for (int i = 0; i < n; i++) {
		if (events[i].data.u32 == STDIN_TAG) {
			input = 1;
			continue;
		}
		handle(events[i].data.u32, events[i].events);
	}
	if (opt.mode == STORM && !opening) {
		double t = now();
		while (heapLen > 0 && cs[heap[0]].due <= t)
			startConnect(&cs[heapPop()]);
	}
	return input;
}

/* Open connections [0, n), at most --open-concurrency unanswered at once. */
static int openAll(int n, double deadline)
{
	opening = 1;
	nextToOpen = 0;
	inFlight = 0;
	while (now() < deadline) {
		while (inFlight < opt.openConcurrency && nextToOpen < n) {
			inFlight++;
			startConnect(&cs[nextToOpen++]);
		}
		if (nextToOpen >= n && inFlight <= 0)
			break;
		turn(0.01);
	}
	opening = 0;
	return nConfirmed;
}

static void closeAll(void)
{
	for (int i = 0; i < nconns; i++)
		if (cs[i].fd >= 0)
			closeConn(&cs[i]);
}

static int cmpU32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static double percentile(double p)
{
	if (nlat == 0)
		return -1;
	size_t k = (size_t)ceil(p * (double)nlat);
	if (k < 1)
		k = 1;
	return (double)lat[k - 1] / 1e3; /* microseconds */
}

static void printCommon(const char *event, double cpu, double wall)
{
	printf("{\"event\":\"%s\",\"mode\":%d,\"conns\":%d,\"opened\":%d,\"errors\":%ld,"
	       "\"connect_errors\":%ld,\"data_errors\":%ld,\"closed_early\":%ld,"
	       "\"open_s\":%.3f,\"loadgen_cpu\":%.3f,\"loadgen_wall\":%.3f,\"server_cpu_s\":%.3f,"
	       "\"first_error\":\"%s\"",
	       event, (int)opt.mode, opt.conns, nConfirmed, errors, connectErrors, dataErrors,
	       closedEarly, openSeconds, wall > 0 ? cpu / wall : 0.0, wall, serverCpu, firstError);
}

static int runLoad(double deadline)
{
	/* Everyone answered once: now the timed run. */
	double cpu0 = cpuSeconds();
	windowStart = now() + opt.warmup;
	windowEnd = windowStart + opt.duration;
	running = 1;
	flooding = 1;
	for (int i = 0; i < nconns; i++) {
		cs[i].runs = 0;
		if (cs[i].state != OPEN)
			continue;
		if (cs[i].flooder) {
			flood(&cs[i]);
		} else {
			outstanding++;
			startExchange(&cs[i]);
		}
	}
	double cpuStart = 0, serverStart = -1;
	int inWindow = 0;
	while (now() < windowEnd && now() < deadline) {
		turn(0.01);
		if (!inWindow && now() >= windowStart) {
			inWindow = 1;
			cpuStart = cpuSeconds();
			serverStart = serverCpuSeconds();
			if (opt.flood) {
				floodQueued0 = floodQueued();
				floodCounting = 1;
			}
		}
	}
	double cpuWindow = cpuSeconds() - (inWindow ? cpuStart : cpu0);
	double serverEnd = serverCpuSeconds();
	/* What the server read of the flood inside the window. */
	floodCounting = 0;
	long floodTaken = opt.flood ? floodBytes + floodQueued0 - floodQueued() : 0;
	if (serverStart >= 0 && serverEnd >= 0)
		serverCpu = serverEnd - serverStart;
	running = 0;
	flooding = 0;
	/* Every exchange under way must still be answered. */
	double drainEnd = now() + 10.0;
	while (outstanding > 0 && now() < drainEnd)
		turn(0.01);
	long unanswered = 0;
	for (int i = 0; i < nconns; i++) {
		if (cs[i].flooder)
			continue;
		if (cs[i].busy)
			noteError(&dataErrors, "no reply within 10 s", i, 0);
		if (cs[i].runs == 0)
			unanswered++;
	}
	if (opt.mode == RR)
		qsort(lat, nlat, sizeof *lat, cmpU32);
	printCommon("result", cpuWindow, opt.duration);
	printf(",\"ops\":%ld,\"duration\":%.3f,\"rate\":%.1f,\"unanswered\":%ld", windowOps,
	       opt.duration, (double)windowOps / opt.duration, unanswered);
	if (opt.flood)
		printf(",\"flood_lines\":%ld,\"flood_rate\":%.1f,\"flood_written\":%ld,"
		       "\"flood_reply_bytes\":%ld,\"flooders_lost\":%ld",
		       floodTaken, (double)floodTaken / opt.duration, floodBytes, floodReplyBytes,
		       floodersLost);
	if (opt.mode == RR)
		printf(",\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"samples\":%zu",
		       percentile(0.5), percentile(0.99), percentile(1.0), nlat);
	printf("}\n");
	return 0;
}

static void runIdle(double deadline)
{
	printCommon("ready", 0, 0);
	printf("}\n");
	fflush(stdout);
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
	epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
	double cpu0 = cpuSeconds(), t0 = now();
	while (now() < deadline)
		if (turn(0.1))
			break;
	long stillOpen = 0;
	for (int i = 0; i < nconns; i++)
		stillOpen += cs[i].state == OPEN;
	double cpu = cpuSeconds() - cpu0, wall = now() - t0;
	printCommon("result", cpu, wall);
	printf(",\"still_open\":%ld,\"heartbeats\":%ld}\n", stillOpen, heartbeatsIn);
}

static void runBroadcast(double deadline)
{
	struct conn *sender = &cs[opt.conns];
	char msg[64];
	int seq = 0;
	double cpu0 = cpuSeconds(), t0 = now();
	/* Warm-up: until one message reaches every receiver. */
	int warm = 0;
	double nextSend = 0;
	while (now() < deadline && seq < MAX_SEQ / 2) {
		if (seq > 0 && counts[seq - 1] >= opt.conns) {
			warm = 1;
			break;
		}
		if (now() >= nextSend) {
			int n = snprintf(msg, sizeof msg, "b%d warm-up", seq++);
			memset(msg + n, '.', (size_t)(opt.size - 1 - n));
			msg[opt.size - 1] = '\n';
			if (send(sender->fd, msg, (size_t)opt.size, MSG_NOSIGNAL) != opt.size)
				noteError(&dataErrors, "sender write", opt.conns, errno);
			nextSend = now() + 0.5;
		}
		turn(0.01);
	}
	if (!warm)
		noteError(&dataErrors, "warm-up broadcast never reached everyone", -1, 0);
	/* Let the warm-up's stragglers arrive. */
	double settle = now() + 0.3;
	while (now() < settle)
		turn(0.01);
	double times[64], firsts[64];
	int done = 0;
	double serverStart = serverCpuSeconds();
	for (int k = 0; k < opt.count && k < 64 && warm; k++) {
		int s = seq++;
		int n = snprintf(msg, sizeof msg, "b%d timed", s);
		memset(msg + n, '.', (size_t)(opt.size - 1 - n));
		msg[opt.size - 1] = '\n';
		double sentAt = now();
		if (send(sender->fd, msg, (size_t)opt.size, MSG_NOSIGNAL) != opt.size)
			noteError(&dataErrors, "sender write", opt.conns, errno);
		double limit = sentAt + 30.0;
		while (counts[s] < opt.conns && now() < limit && now() < deadline)
			turn(0.01);
		if (counts[s] < opt.conns) {
			noteError(&dataErrors, "broadcast did not reach every receiver", -1, 0);
			break;
		}
		times[done] = lastAt[s] - sentAt;
		firsts[done] = firstAt[s] - sentAt;
		done++;
		settle = now() + 0.2;
		while (now() < settle)
			turn(0.01);
	}
	double serverEnd = serverCpuSeconds();
	if (serverStart >= 0 && serverEnd >= 0)
		serverCpu = serverEnd - serverStart;
	double cpu = cpuSeconds() - cpu0, wall = now() - t0;
	printCommon("result", cpu, wall);
	printf(",\"times\":[");
	for (int i = 0; i < done; i++)
		printf("%s%.6f", i ? "," : "", times[i]);
	printf("],\"first\":[");
	for (int i = 0; i < done; i++)
		printf("%s%.6f", i ? "," : "", firsts[i]);
	printf("]}\n");
}

static void runStorm(double deadline)
{
	printCommon("ready", 0, 0);
	printf("}\n");
	fflush(stdout);
	for (int i = 0; i < nconns; i++) {
		cs[i].down = cs[i].everDown = 0;
		cs[i].runs = 0;
		cs[i].fails = 0;
	}
	nBack = nDownEver = 0;
	/* Wait for the server to go, then for everyone to come back. */
	double cpu0 = 0;
	while (now() < deadline) {
		turn(0.05);
		if (nDownEver > 0 && cpu0 == 0)
			cpu0 = cpuSeconds();
		if (nDownEver == opt.conns && nBack == opt.conns)
			break;
	}
	double cpu = cpu0 > 0 ? cpuSeconds() - cpu0 : 0;
	double wall = nDownEver > 0 ? now() - firstDown : 0;
	int peak = 0;
	for (int i = 0; i < MAX_BINS; i++)
		if (bins[i] > peak)
			peak = bins[i];
	if (nBack < opt.conns)
		noteError(&connectErrors, "not every client came back", -1, 0);
	printCommon("result", cpu, wall);
	printf(",\"went_down\":%d,\"back\":%d,\"first_down\":%.6f,\"first_back\":%.6f,"
	       "\"last_back\":%.6f,\"peak_accept_rate\":%.1f,\"attempts\":%ld,\"refused\":%ld}\n",
	       nDownEver, nBack, firstDown, firstBack, lastBack, peak / 0.1, attempts, refused);
}

static void runChurn(double deadline)
{
	double cpu0 = cpuSeconds(), t0 = now(), server0 = serverCpuSeconds();
	openAll(nconns, deadline);
	double wall = now() - t0, server1 = serverCpuSeconds();
	if (server0 >= 0 && server1 >= 0)
		serverCpu = server1 - server0;
	if (nChurned < nconns)
		noteError(&connectErrors, "not every connection was answered", -1, 0);
	printCommon("result", cpuSeconds() - cpu0, wall);
	printf(",\"done\":%d,\"churn_s\":%.3f,\"rate\":%.1f,\"unanswered\":%d}\n", nChurned, wall,
	       wall > 0 ? nChurned / wall : 0.0, nconns - nChurned);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loadgen rr|pipeline|idle|broadcast|storm|churn --port P [--conns N]\n"
		"  [--size BYTES] [--burst N] [--duration S] [--warmup S] [--count N]\n"
		"  [--open-concurrency N] [--retry-initial S] [--retry-max S] [--time-limit S]\n"
		"  [--seed N] [--sources N] [--flood N] [--server-pid PID] [--hello PREFIX]\n"
		"  [--expect-first LINE] [--heartbeats 0|1]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	const char *m = argv[1];
	if (!strcmp(m, "rr"))
		opt.mode = RR;
	else if (!strcmp(m, "pipeline"))
		opt.mode = PIPELINE;
	else if (!strcmp(m, "idle"))
		opt.mode = IDLE;
	else if (!strcmp(m, "broadcast"))
		opt.mode = BROADCAST;
	else if (!strcmp(m, "storm"))
		opt.mode = STORM;
	else if (!strcmp(m, "churn"))
		opt.mode = CHURN;
	else
		usage();
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--port"))
			opt.port = atoi(v);
		else if (!strcmp(k, "--conns"))
			opt.conns = atoi(v);
		else if (!strcmp(k, "--size"))
			opt.size = atoi(v);
		else if (!strcmp(k, "--burst"))
			opt.burst = atoi(v);
		else if (!strcmp(k, "--duration"))
			opt.duration = atof(v);
		else if (!strcmp(k, "--warmup"))
			opt.warmup = atof(v);
		else if (!strcmp(k, "--count"))
			opt.count = atoi(v);
		else if (!strcmp(k, "--open-concurrency"))
			opt.openConcurrency = atoi(v);
		else if (!strcmp(k, "--retry-initial"))
			opt.retryInitial = atof(v);
		else if (!strcmp(k, "--retry-max"))
			opt.retryMax = atof(v);
		else if (!strcmp(k, "--time-limit"))
			opt.timeLimit = atof(v);
		else if (!strcmp(k, "--seed"))
			opt.seed = (unsigned)atoi(v);
		else if (!strcmp(k, "--sources"))
			opt.sources = atoi(v);
		else if (!strcmp(k, "--flood"))
			opt.flood = atoi(v);
		else if (!strcmp(k, "--hello"))
			opt.hello = v;
		else if (!strcmp(k, "--expect-first")) {
			opt.expectFirst = v;
			opt.expectFirstLen = strlen(v) + 1;
		}
		else if (!strcmp(k, "--server-pid"))
			opt.serverPid = atoi(v);
		else if (!strcmp(k, "--heartbeats"))
			opt.heartbeats = atoi(v);
		else
			usage();
	}
	if (opt.port <= 0 || opt.conns < 1 || opt.size < 16 || opt.size > 65536 || opt.burst < 1 ||
	    (opt.mode == BROADCAST && opt.size > 63) || opt.sources < 0 || opt.sources > 250 ||
	    opt.flood < 0 || (opt.flood && opt.mode != RR) || (opt.heartbeats && opt.mode != IDLE))
		usage();
	memset(floodBuf, '\n', sizeof floodBuf);
	srand(opt.seed);
	server.sin_family = AF_INET;
	server.sin_port = htons((uint16_t)opt.port);
	server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	ep = epoll_create1(EPOLL_CLOEXEC);
	rxbuf = malloc(RXBUF);
	nconns = opt.conns + (opt.mode == BROADCAST ? 1 : 0) + opt.flood;
	cs = calloc((size_t)nconns, sizeof *cs);
	heap = calloc((size_t)nconns, sizeof *heap);
	if (!rxbuf || !cs || !heap) {
		perror("malloc");
		return 2;
	}
	int burst = opt.mode == PIPELINE ? opt.burst : 1;
	for (int i = 0; i < nconns; i++) {
		cs[i].fd = -1;
		cs[i].heapIndex = -1;
		cs[i].flooder = opt.mode == RR && i >= opt.conns;
		makePattern(&cs[i], i, opt.size, burst);
	}
	if (opt.mode == RR) {
		latCap = 16u << 20;
		lat = malloc(latCap * sizeof *lat);
		if (!lat) {
			perror("malloc");
			return 2;
		}
	}
	double deadline = now() + opt.timeLimit;
	if (opt.mode == CHURN) {
		runChurn(deadline);
		fflush(stdout);
		closeAll();
		return errors ? 1 : 0;
	}
	double openStart = now(), cpuOpen = cpuSeconds();
	openAll(nconns, deadline);
	openSeconds = now() - openStart;
	fprintf(stderr, "loadgen: opened %d of %d in %.2f s (cpu %.2f s)\n", nConfirmed, nconns,
		openSeconds, cpuSeconds() - cpuOpen);
	if (nConfirmed < nconns) {
		noteError(&connectErrors, "not every connection opened", -1, 0);
		printCommon("result", 0, 0);
		printf("}\n");
		closeAll();
		return 1;
	}
	switch (opt.mode) {
	case RR:
	case PIPELINE:
		runLoad(deadline);
		break;
	case IDLE:
		runIdle(deadline);
		break;
	case BROADCAST:
		runBroadcast(deadline);
		break;
	case STORM:
		runStorm(deadline);
		break;
	case CHURN: /* run above, without opening first */
		break;
	}
	fflush(stdout);
	closeAll();
	return errors ? 1 : 0;
}
