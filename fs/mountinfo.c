/* mountinfo: see mountinfo.h. */
#include "mountinfo.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Undo the octal escapes of mountinfo (\040 for a space). */
static void unescape(char *s)
{
	char *d = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' &&
		    s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 4;
		} else {
			*d++ = *s++;
		}
	}
	*d = '\0';
}

int mountinfo_top(const char *path, struct mount_entry *out)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) != -1) {
		char mnt[PATH_MAX], dev[sizeof(out->dev)];
		char fstype[sizeof(out->fstype)];
		char *sep = strstr(line, " - ");

		/* id parent MAJ:MIN root mountpoint ... - fstype source ... */
		if (!sep ||
		    sscanf(line, "%*s %*s %31s %*s %4095s", dev, mnt) != 2 ||
		    sscanf(sep + 3, "%255s", fstype) != 1)
			continue;
		unescape(mnt);
		if (strcmp(mnt, path))
			continue;
		/* Later lines are mounted on top of earlier ones. */
		memcpy(out->dev, dev, sizeof(dev));
		memcpy(out->fstype, fstype, sizeof(fstype));
		ret = 0;
	}
	free(line);
	fclose(f);
	return ret;
}
