/*
 * samepagefs: mount a backing directory through one deduplicating page
 * cache. Parses the command line, checks it, mounts, detaches once the
 * mount and the cache are ready, runs the session, and tears down in
 * reverse order so that an unmount loses nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cache.h"
#include "config.h"
#include "dedup.h"
#include "fs.h"
#include "log.h"
#include "opts.h"
#include "prune.h"
#include "remount.h"

/* Workers stay alive when idle: creating a thread per request burst costs
 * more than the requests. */
#define SPFS_THREADS 16

/* A closed file's cfile holds about three descriptors; let those use at
 * most a fifth of the limit, the rest is for inodes and open files. */
#define SPFS_FDS_PER_IDLE 16
#define SPFS_IDLE_MIN     64
#define SPFS_IDLE_MAX     65536

/*
 * Every inode the kernel knows holds a descriptor, every cached file a few
 * more: take as many as we may (root may go up to fs.nr_open). Returns the
 * limit now in force.
 */
static rlim_t spfs_raise_nofile(void)
{
	struct rlimit rl, want;
	unsigned long long nr_open;
	FILE *f;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 1024;
	f = fopen("/proc/sys/fs/nr_open", "r");
	if (f) {
		if (fscanf(f, "%llu", &nr_open) == 1 && nr_open > rl.rlim_max) {
			want.rlim_cur = want.rlim_max = (rlim_t)nr_open;
			if (setrlimit(RLIMIT_NOFILE, &want) == 0)
				rl = want;
		}
		fclose(f);
	}
	if (rl.rlim_cur < rl.rlim_max) {
		want.rlim_cur = want.rlim_max = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			rl = want;
	}
	return rl.rlim_cur;
}

/* Closed files keep their cfile (and its descriptors) up to a share of
 * the descriptor limit. */
static size_t spfs_idle_max(rlim_t nofile)
{
	rlim_t n = nofile / SPFS_FDS_PER_IDLE;

	if (n < SPFS_IDLE_MIN)
		n = SPFS_IDLE_MIN;
	if (n > SPFS_IDLE_MAX)
		n = SPFS_IDLE_MAX;
	return (size_t)n;
}

static int spfs_setup(struct spfs *fs, const struct opts *o)
{
	rlim_t nofile;
	struct stat st;
	int fd, ret;

	memset(fs, 0, sizeof(*fs));
	sem_init(&fs->inval_slots, 0, SPFS_THREADS / 2);
	fs->state_fd = -1;
	fs->opts = o;
	fs->backing = o->backing;
	fs->backing_len = strlen(o->backing);
	fs->readonly = o->readonly;
	fs->allow_mmap = o->allow_mmap;
	fs->as_root = geteuid() == 0;
	fs->owner_uid = getuid();
	fs->timeout = 1.0;

	fd = open(o->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1) {
		ret = -errno;
		log_err("backing directory '%s': %s", o->backing, strerror(-ret));
		return ret;
	}
	fs->backing_acls = getxattr(o->backing, "system.posix_acl_access",
				    NULL, 0) >= 0 || errno == ENODATA;
	nofile = spfs_raise_nofile();
	log_debug("descriptor limit %llu, cfiles kept for %zu closed files",
		  (unsigned long long)nofile, spfs_idle_max(nofile));
	ret = itab_init(&fs->itab, fd, spfs_idle_max(nofile));
	if (ret) {
		close(fd);
		log_err("backing directory '%s': %s", o->backing, strerror(-ret));
		return ret;
	}
	/* Made now, so that it is hidden from the first lookup on. */
	if (!o->readonly && mkdir(o->state_dir, 0700) && errno != EEXIST)
		log_warn("state directory '%s': %s", o->state_dir,
			 strerror(errno));
	fs->state_fd = open(o->state_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fs->state_fd >= 0)
		snprintf(fs->state_path, sizeof(fs->state_path),
			 "/proc/self/fd/%d", fs->state_fd);
	if (o->state_parent && stat(o->state_parent, &st) == 0) {
		fs->hide = true;
		fs->hide_dev = st.st_dev;
		fs->hide_ino = st.st_ino;
		fs->hide_name = o->state_name;
	}
	return 0;
}

_Static_assert((int)OPTS_SCOPE_UID == (int)DEDUP_SCOPE_UID &&
		       (int)OPTS_SCOPE_NONE == (int)DEDUP_SCOPE_NONE,
	       "mount option scopes name dedup's");

static int spfs_start(struct spfs *fs, const struct opts *o)
{
	struct cache_config cc = {
		.size_bytes = o->cache_size,
		.writeback_ms = o->writeback_ms,
		.readonly = o->readonly,
		.noatime = o->noatime,
		.watch_pressure = true,
		/* as many kept files as closed files keep their cfiles */
		.detached_fds_max = (unsigned)fs->itab.idle_max,
	};
	struct dedup_config dc;
	int ret;

	ret = cache_create(&cc, &fs->cache);
	if (ret) {
		fs->cache = NULL;
		log_err("cannot create the page cache (cache_size %llu): %s",
			(unsigned long long)o->cache_size, strerror(-ret));
		return ret;
	}
	dedup_config_defaults(&dc);
	dc.run = o->scan;
	dc.scope = (enum dedup_scope)o->dedup_scope;
	/* By the descriptor opened before the mount (see struct spfs). */
	dc.state_dir = fs->state_fd >= 0 ? fs->state_path : o->state_dir;
	dc.store_quota = o->store_quota;
	dc.rebuild_state = o->rebuild_state;
	ret = dedup_create(fs->cache, &dc, &fs->dedup);
	if (ret == -EACCES || ret == -EROFS || ret == -EPERM) {
		/* A state directory we cannot write costs persistence only. */
		log_warn("state directory '%s': %s: running without "
			 "persistence", o->state_dir, strerror(-ret));
		dc.state_dir = NULL;
		ret = dedup_create(fs->cache, &dc, &fs->dedup);
	}
	if (ret) {
		fs->dedup = NULL;
		if (ret == -EPROTO)
			log_err("state directory '%s': the store was written by "
				"another version of samepage; mount with -o "
				"rebuild_state to start it afresh", o->state_dir);
		else if (ret == -EBADMSG)
			log_err("state directory '%s': data.mdb is not a samepage "
				"store or is corrupt; mount with -o rebuild_state "
				"to start it afresh", o->state_dir);
		else
			log_err("cannot start deduplication (state directory "
				"'%s'): %s", o->state_dir, strerror(-ret));
		return ret;
	}
	if (dc.state_dir &&
	    prune_start(fs->dedup, fs->itab.root->fd, &fs->prune) == 0)
		fs->prune_started = true;
	log_debug("cache_size %llu, writeback_ms %u, scan %d, dedup_scope %s, "
		  "state_dir %s", (unsigned long long)o->cache_size,
		  o->writeback_ms, o->scan, opts_scope_name(o->dedup_scope),
		  o->state_dir);
	return 0;
}

/* Returns the exit status of the teardown: non-zero if data was lost. */
static int spfs_stop(struct spfs *fs)
{
	int status = 0, ret;

	/* Shared pages still waiting to be recorded are recorded through
	 * their files, which the next step drops. */
	if (fs->dedup)
		dedup_flush(fs->dedup);
	/* Dropping the inodes drops their cfiles, which writes them back
	 * while the store still hears of the files' new identities. */
	itab_destroy(&fs->itab);
	sem_destroy(&fs->inval_slots);
	if (fs->prune_started)
		prune_stop(fs->prune);
	if (fs->cache && fs->dedup)
		cache_sync_all(fs->cache);
	if (fs->dedup)
		dedup_destroy(fs->dedup);
	if (fs->cache) {
		ret = cache_destroy(fs->cache);
		if (ret) {
			log_err("data written through %s could not all be "
				"written back to %s: %s", fs->opts->mountpoint,
				fs->backing, strerror(-ret));
			status = 1;
		}
	}
	if (fs->state_fd >= 0)
		close(fs->state_fd);
	fs->state_fd = -1;
	return status;
}

/*
 * Like fuse_daemonize(), except that the parent waits for the child to say
 * the cache is running, so that it exits only when the mount serves
 * requests and reports a failure to start with its exit status. Returns
 * in the child only, with the descriptor to report on.
 */
static int spfs_detach(struct fuse_session *se, int *ready_fd)
{
	int pfd[2];
	pid_t pid;
	char st;

	if (pipe2(pfd, O_CLOEXEC)) {
		log_err("cannot daemonise: pipe: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid == -1) {
		log_err("cannot daemonise: fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid > 0) {
		close(pfd[1]);
		if (read(pfd[0], &st, 1) != 1) {
			/* The child died without a word: take the dead mount
			 * away with it. */
			fuse_session_unmount(se);
			st = 1;
		}
		_exit(st);
	}
	close(pfd[0]);
	setsid();
	*ready_fd = pfd[1];
	return 0;
}

static void spfs_report(int *ready_fd, char status)
{
	int nul;

	if (*ready_fd < 0)
		return;
	if (status == 0) {
		if (chdir("/"))
			log_warn("chdir /: %s", strerror(errno));
		nul = open("/dev/null", O_RDWR);
		if (nul >= 0) {
			dup2(nul, STDIN_FILENO);
			dup2(nul, STDOUT_FILENO);
			dup2(nul, STDERR_FILENO);
			if (nul > STDERR_FILENO)
				close(nul);
		}
		log_use_syslog();
	}
	if (write(*ready_fd, &status, 1) != 1)
		log_err("cannot tell the parent process: %s", strerror(errno));
	close(*ready_fd);
	*ready_fd = -1;
}

static int spfs_loop(struct fuse_session *se)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int ret;

	if (!cfg) {
		log_err("%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_max_threads(cfg, SPFS_THREADS);
	fuse_loop_cfg_set_idle_threads(cfg, SPFS_THREADS);
	ret = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	/* A signal that asked us to stop is a normal end (libfuse reports
	 * its number, with either sign depending on the version). */
	if (ret < 0)
		ret = -ret;
	if (ret == SIGTERM || ret == SIGINT || ret == SIGHUP)
		ret = 0;
	return ret;
}

int main(int argc, char *argv[])
{
	struct fuse_session *se;
	struct spfs fs;
	struct opts o;
	int ready_fd = -1;
	int status = 1;

	if (opts_parse(argc, argv, &o))
		goto out_opts;
	if (o.help) {
		opts_usage(argv[0]);
		status = 0;
		goto out_opts;
	}
	if (o.version) {
		printf("samepagefs %s\nFUSE library version %s\n",
		       SAMEPAGE_VERSION, fuse_pkgversion());
		fflush(stdout);
		fuse_lowlevel_version();
		status = 0;
		goto out_opts;
	}
	if (o.remount) {
		/* mount(8) gives the source and the mount point, or just the
		 * mount point. */
		status = remount_mounted(o.mount_arg ? o.mount_arg
						     : o.backing_arg,
					 o.readonly) ? 1 : 0;
		goto out_opts;
	}
	if (opts_check(&o))
		goto out_opts;
	log_setup(o.debug);
	/* Modes arrive with the caller's umask applied; ours must not apply
	 * a second time. */
	umask(0);

	if (spfs_setup(&fs, &o))
		goto out_opts;
	/* libfuse prints its own message (an unknown option, say). */
	se = fuse_session_new(&o.args, &spfs_ops, sizeof(spfs_ops), &fs);
	if (!se)
		goto out_stop;
	fs.se = se;
	/* Its failures, too, are explained by libfuse in one message. */
	if (fuse_session_mount(se, o.mountpoint))
		goto out_session;
	if (!o.foreground && spfs_detach(se, &ready_fd))
		goto out_unmount;
	if (fuse_set_signal_handlers(se)) {
		log_err("cannot install signal handlers");
		goto out_unmount;
	}
	if (spfs_start(&fs, &o))
		goto out_signals;
	spfs_report(&ready_fd, 0);
	log_info("mounted %s on %s", o.backing, o.mountpoint);

	status = spfs_loop(se) ? 1 : 0;
	log_info("unmounting %s", o.mountpoint);

out_signals:
	fuse_remove_signal_handlers(se);
out_unmount:
	fuse_session_unmount(se);
out_session:
	/* Calls ops_destroy(), which writes the cache back. */
	fuse_session_destroy(se);
out_stop:
	if (spfs_stop(&fs))
		status = 1;
	spfs_report(&ready_fd, (char)status);
out_opts:
	opts_free(&o);
	return status;
}
