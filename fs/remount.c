/* remount: see remount.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#include "mountinfo.h"
#include "remount.h"

/* The statvfs flags that mount(2) takes back as MS_ flags. */
static const struct {
	unsigned long st, ms;
} remount_kept[] = {
	{ ST_NOSUID, MS_NOSUID },         { ST_NODEV, MS_NODEV },
	{ ST_NOEXEC, MS_NOEXEC },         { ST_SYNCHRONOUS, MS_SYNCHRONOUS },
	{ ST_NOATIME, MS_NOATIME },       { ST_NODIRATIME, MS_NODIRATIME },
	{ ST_RELATIME, MS_RELATIME },
};

static int remount_fail(const char *path, int err, const char *why)
{
	fprintf(stderr, "samepagefs: remount of '%s': %s%s%s\n", path,
		strerror(err), why ? ": " : "", why ? why : "");
	return -err;
}

int remount_mounted(const char *mount_arg, bool readonly)
{
	unsigned long flags = MS_REMOUNT | (readonly ? MS_RDONLY : 0);
	struct mount_entry m;
	struct statvfs sv;
	char *path;
	int ret;

	if (!mount_arg)
		return remount_fail("", EINVAL, "no mount point given");
	path = realpath(mount_arg, NULL);
	if (!path)
		return remount_fail(mount_arg, errno, NULL);
	ret = mountinfo_top(path, &m);
	if (ret || strcmp(m.fstype, "fuse.samepagefs")) {
		ret = remount_fail(mount_arg, EINVAL,
				   "no samepage mount is there");
		goto out;
	}
	if (statvfs(path, &sv)) {
		ret = remount_fail(mount_arg, errno, NULL);
		goto out;
	}
	for (size_t i = 0; i < sizeof(remount_kept) / sizeof(remount_kept[0]);
	     i++)
		if (sv.f_flag & remount_kept[i].st)
			flags |= remount_kept[i].ms;
	ret = mount(NULL, path, NULL, flags, NULL) ? remount_fail(mount_arg,
								errno, NULL)
						     : 0;
out:
	free(path);
	return ret;
}
