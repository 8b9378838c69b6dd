/*
 * bench_ceiling: the fastest FUSE server we can write, as a yardstick.
 *
 * Exposes one regular file, /file, of SIZE bytes held in memory (a fixed
 * pattern to start with). Opens are direct_io, so every read and write is
 * a FUSE request: a read is answered with fuse_reply_buf() straight from
 * the buffer, a write is copied into it (a fixed size: writes past the end
 * are cut short), fsync has nothing to do. No lookups in a cache, no locks,
 * no backing I/O; concurrent writes to one range may interleave, which no
 * benchmark here checks. Whatever a real server adds on top of this is its
 * own cost; whatever this cannot beat is the cost of the kernel <-> user
 * round trip on this machine.
 *
 * The loop: max_threads (2 to 16) and clone_fd changed random 4 KiB reads
 * (libaio, 2 jobs x iodepth 16) by less than the noise, 175k-184k IOPS on
 * a 2-core VM; every thread is kept alive (idle threads = max threads).
 *
 *   bench_ceiling [-f] [-o size=256M] [-o max_threads=N] MOUNTPOINT
 *
 * Built by tools/bench into its scratch directory; not part of the meson
 * build on purpose (it is a measuring stick, not a product).
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CEIL_FILE_INO 2
#define CEIL_FILE_NAME "file"

struct ceil_state {
	char *size_str;
	size_t size;
	char *data;
};
static struct ceil_state cs;

static const struct fuse_opt ceil_opts[] = {
	{ "size=%s", offsetof(struct ceil_state, size_str), 0 },
	FUSE_OPT_END
};

static int ceil_parse_size(const char *s, size_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'G': case 'g': v <<= 10; /* fall through */
	case 'M': case 'm': v <<= 10; /* fall through */
	case 'K': case 'k': v <<= 10; end++; break;
	case '\0': break;
	default: return -EINVAL;
	}
	if (*end != '\0')
		return -EINVAL;
	*out = v;
	return 0;
}

static void ceil_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
		st->st_size = cs.size;
		st->st_blocks = cs.size / 512;
	}
}

static void ceil_init(void *userdata, struct fuse_conn_info *conn)
{
	/* The kernel default (12 in flight) would make the ceiling a
	 * measure of the queue limit, not of the round trip. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
}

static void ceil_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, CEIL_FILE_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = CEIL_FILE_INO;
	e.attr_timeout = 86400.0;
	e.entry_timeout = 86400.0;
	ceil_stat(e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void ceil_getattr(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	struct stat st;

	if (ino != FUSE_ROOT_ID && ino != CEIL_FILE_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	ceil_stat(ino, &st);
	fuse_reply_attr(req, &st, 86400.0);
}

static void ceil_open(fuse_req_t req, fuse_ino_t ino,
		      struct fuse_file_info *fi)
{
	if (ino != CEIL_FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void ceil_read(fuse_req_t req, fuse_ino_t ino, size_t size,
		      off_t off, struct fuse_file_info *fi)
{
	if ((size_t)off >= cs.size)
		size = 0;
	else if (size > cs.size - off)
		size = cs.size - off;
	fuse_reply_buf(req, cs.data + (size ? off : 0), size);
}

static void ceil_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size, off_t off, struct fuse_file_info *fi)
{
	if ((size_t)off >= cs.size) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	if (size > cs.size - off)
		size = cs.size - off;
	memcpy(cs.data + off, buf, size);
	fuse_reply_write(req, size);
}

static void ceil_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
			 int to_set, struct fuse_file_info *fi)
{
	struct stat st;

	/* The size is fixed; times and modes are not kept. */
	if ((to_set & FUSE_SET_ATTR_SIZE) && (size_t)attr->st_size != cs.size) {
		fuse_reply_err(req, EPERM);
		return;
	}
	ceil_stat(ino, &st);
	fuse_reply_attr(req, &st, 86400.0);
}

static void ceil_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0); /* memory is all there is */
}

static void ceil_flush(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ceil_ops = {
	.init    = ceil_init,
	.lookup  = ceil_lookup,
	.getattr = ceil_getattr,
	.open    = ceil_open,
	.read    = ceil_read,
	.write   = ceil_write,
	.setattr = ceil_setattr,
	.fsync   = ceil_fsync,
	.flush   = ceil_flush,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_loop_config *loop;
	struct fuse_session *se;
	size_t i;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 1;
	if (!opts.mountpoint) {
		fprintf(stderr, "usage: %s [-f] [-o size=SIZE] "
			"[-o max_threads=N] MOUNTPOINT\n",
			argv[0]);
		goto out_args;
	}
	if (fuse_opt_parse(&args, &cs, ceil_opts, NULL) == -1)
		goto out_args;
	cs.size = 256u << 20;
	if (cs.size_str && ceil_parse_size(cs.size_str, &cs.size) < 0) {
		fprintf(stderr, "bench_ceiling: bad size=%s\n", cs.size_str);
		goto out_args;
	}
	cs.data = malloc(cs.size ? cs.size : 1);
	if (!cs.data) {
		fprintf(stderr, "bench_ceiling: cannot allocate %zu bytes\n",
			cs.size);
		goto out_args;
	}
	/* Touch every page now, so reads never fault in the measured run. */
	for (i = 0; i < cs.size; i++)
		cs.data[i] = (char)(i * 131 + (i >> 12));

	se = fuse_session_new(&args, &ceil_ops, sizeof(ceil_ops), NULL);
	if (!se)
		goto out_data;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(opts.foreground);

	loop = fuse_loop_cfg_create();
	if (!loop)
		goto out_unmount;
	/* Keep every idle thread: creating threads on demand is a cost a
	 * tuned server does not pay in steady state. -o max_threads=N sets
	 * the pool (libfuse's default is 10). */
	fuse_loop_cfg_set_max_threads(loop, opts.max_threads);
	fuse_loop_cfg_set_idle_threads(loop, opts.max_threads);
	fuse_loop_cfg_set_clone_fd(loop, opts.clone_fd);
	ret = opts.singlethread ? fuse_session_loop(se)
				: fuse_session_loop_mt(se, loop);
	ret = ret ? 1 : 0;
	fuse_loop_cfg_destroy(loop);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_data:
	free(cs.data);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
