/* ops_dir: directory handles; see ops.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "ops.h"
#include "opts.h"

/*
 * The handle is not touched once a reply is on its way: the kernel may
 * release it (and another worker free it) as soon as it has the answer.
 */
struct ops_dir {
	pthread_mutex_t lock;   /* everything below */
	DIR            *dp;
	off_t           offset; /* position of dp, as the kernel knows it */
	struct dirent  *entry;  /* read from dp but not yet replied */
};

static struct ops_dir *ops_dir_of(struct fuse_file_info *fi)
{
	return (struct ops_dir *)(uintptr_t)fi->fh;
}

void ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct spfs *fs = spfs_of(req);
	struct ops_dir *d;
	int fd, ret;

	d = calloc(1, sizeof(*d));
	if (!d) {
		ret = ENOMEM;
		goto out_err;
	}
	fd = openat(spfs_inode(fs, ino)->fd, ".", O_RDONLY | O_DIRECTORY |
		    O_CLOEXEC | (fs->opts->noatime ? O_NOATIME : 0));
	if (fd == -1 && errno == EPERM && fs->opts->noatime)
		fd = openat(spfs_inode(fs, ino)->fd, ".", /* not ours */
			    O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1) {
		ret = errno;
		goto out_free;
	}
	d->dp = fdopendir(fd);
	if (!d->dp) {
		ret = errno;
		close(fd);
		goto out_free;
	}
	pthread_mutex_init(&d->lock, NULL);
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		/* Interrupted: no releasedir will come. */
		closedir(d->dp);
		pthread_mutex_destroy(&d->lock);
		free(d);
	}
	return;

out_free:
	free(d);
out_err:
	fuse_reply_err(req, ret);
}

static bool is_dot_or_dotdot(const char *name)
{
	return name[0] == '.' &&
	       (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static void ops_do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi, bool plus)
{
	struct spfs *fs = spfs_of(req);
	struct inode *dir = spfs_inode(fs, ino);
	struct ops_dir *d = ops_dir_of(fi);
	size_t rem = size;
	char *buf, *p;
	int err = 0;

	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p = buf;
	pthread_mutex_lock(&d->lock);
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->entry = NULL;
		d->offset = off;
	}
	for (;;) {
		struct fuse_entry_param e;
		fuse_ino_t counted = 0;
		const char *name;
		size_t entsize;
		off_t nextoff;

		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				err = errno;
				break;
			}
		}
		nextoff = d->entry->d_off;
		name = d->entry->d_name;
		if (spfs_hidden(fs, dir, name))
			goto next;
		if (plus) {
			if (is_dot_or_dotdot(name)) {
				memset(&e, 0, sizeof(e));
				e.attr.st_ino = d->entry->d_ino;
				e.attr.st_mode = (mode_t)d->entry->d_type << 12;
			} else {
				int ret = ops_do_lookup(fs, dir, name, &e);

				/* Gone since readdir saw it: skip it. */
				if (ret == -ENOENT)
					goto next;
				if (ret) {
					err = -ret;
					break;
				}
				counted = e.ino;
			}
			entsize = fuse_add_direntry_plus(req, p, rem, name,
							 &e, nextoff);
		} else {
			struct stat st = {
				.st_ino = d->entry->d_ino,
				.st_mode = (mode_t)d->entry->d_type << 12,
			};

			entsize = fuse_add_direntry(req, p, rem, name, &st,
						    nextoff);
		}
		if (entsize > rem) {
			/* Full: this entry goes in the next reply. */
			if (counted)
				itab_forget(&fs->itab,
					    spfs_inode(fs, counted), 1);
			break;
		}
		p += entsize;
		rem -= entsize;
next:
		d->entry = NULL;
		d->offset = nextoff;
	}
	pthread_mutex_unlock(&d->lock);
	/* Entries already in the buffer carry lookups: send them and let
	 * the next call meet the error again. */
	if (err && rem == size)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

void ops_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		 struct fuse_file_info *fi)
{
	ops_do_readdir(req, ino, size, off, fi, false);
}

void ops_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	ops_do_readdir(req, ino, size, off, fi, true);
}

void ops_releasedir(fuse_req_t req, fuse_ino_t ino,
		    struct fuse_file_info *fi)
{
	struct ops_dir *d = ops_dir_of(fi);

	closedir(d->dp);
	pthread_mutex_destroy(&d->lock);
	free(d);
	fuse_reply_err(req, 0);
}

void ops_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
		  struct fuse_file_info *fi)
{
	int fd = dirfd(ops_dir_of(fi)->dp);
	int ret = datasync ? fdatasync(fd) : fsync(fd);

	fuse_reply_err(req, ret ? errno : 0);
}
