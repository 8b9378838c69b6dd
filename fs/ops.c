/* ops: the operation table, init and destroy; see ops.h. */
#include <errno.h>
#include <string.h>

#include "cache.h"
#include "log.h"
#include "ops.h"

/* Background requests (readahead of private mappings, async direct I/O)
 * the kernel may have in flight before it throttles its callers. */
#define OPS_MAX_BACKGROUND 64

static void ops_init(void *userdata, struct fuse_conn_info *conn)
{
	struct spfs *fs = userdata;

	/* Requests of up to CACHE_MAX_IO_PAGES pages (FUSE max_pages). */
	conn->max_write = CACHE_MAX_IO_PAGES * CACHE_PAGE_SIZE;
	conn->max_readahead = CACHE_MAX_IO_PAGES * CACHE_PAGE_SIZE;
	conn->max_background = OPS_MAX_BACKGROUND;
	conn->congestion_threshold = OPS_MAX_BACKGROUND * 3 / 4;
	conn->time_gran = 1;

	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* chattr on directories too (ops_ioctl.c). */
	if (conn->capable & FUSE_CAP_IOCTL_DIR)
		conn->want |= FUSE_CAP_IOCTL_DIR;
	/*
	 * POSIX ACLs as on the backing file system: the kernel checks them
	 * (its default_permissions) and leaves the caller's umask to us, so
	 * that a directory's default ACL, not the umask, gives a new name's
	 * mode (ops_creds_enter). Without the one, the other is moot: the
	 * VFS strips the umask itself where the kernel knows of no ACLs.
	 */
	if (fs->backing_acls &&
	    (conn->capable & (FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK)) ==
		    (FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK)) {
		conn->want |= FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
		fs->caller_umask = true;
	}
	/*
	 * Locks stay in the kernel: with neither POSIX_LOCKS nor FLOCK_LOCKS
	 * it keeps them locally, which is exactly right on one host. The
	 * kernel's write-back cache would be a second copy of every page.
	 */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS |
			FUSE_CAP_WRITEBACK_CACHE);
	/*
	 * Writes land in the cache and reach the backing file as root, which
	 * keeps setuid bits: let the kernel clear them (it sends a setattr of
	 * the mode before the first write of an unprivileged caller).
	 */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;

	log_debug("init: protocol %u.%u, max_write %u, max_readahead %u, "
		  "capable 0x%x, want 0x%x", conn->proto_major,
		  conn->proto_minor, conn->max_write, conn->max_readahead,
		  conn->capable, conn->want);
}

static void ops_destroy(void *userdata)
{
	struct spfs *fs = userdata;
	int ret;

	if (!fs->cache)
		return;
	ret = cache_sync_all(fs->cache);
	if (ret)
		log_err("writing back the cache at unmount: %s",
			strerror(-ret));
}

const struct fuse_lowlevel_ops spfs_ops = {
	.init            = ops_init,
	.destroy         = ops_destroy,
	.lookup          = ops_lookup,
	.forget          = ops_forget,
	.forget_multi    = ops_forget_multi,
	.getattr         = ops_getattr,
	.setattr         = ops_setattr,
	.readlink        = ops_readlink,
	.mknod           = ops_mknod,
	.mkdir           = ops_mkdir,
	.unlink          = ops_unlink,
	.rmdir           = ops_rmdir,
	.symlink         = ops_symlink,
	.rename          = ops_rename,
	.link            = ops_link,
	.open            = ops_open,
	.create          = ops_create,
	.read            = ops_read,
	.write           = ops_write,
	.flush           = ops_flush,
	.release         = ops_release,
	.fsync           = ops_fsync,
	.opendir         = ops_opendir,
	.readdir         = ops_readdir,
	.readdirplus     = ops_readdirplus,
	.releasedir      = ops_releasedir,
	.fsyncdir        = ops_fsyncdir,
	.statfs          = ops_statfs,
	.setxattr        = ops_setxattr,
	.getxattr        = ops_getxattr,
	.listxattr       = ops_listxattr,
	.removexattr     = ops_removexattr,
	.fallocate       = ops_fallocate,
	.lseek           = ops_lseek,
	.copy_file_range = ops_copy_file_range,
	.ioctl           = ops_ioctl,
};
