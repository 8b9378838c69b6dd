/*
 * samepagectl: show what a samepage file system caches and shares, and
 * tune its daemon at run time.
 *
 * Every question goes to the daemon as a virtual extended attribute of the
 * mount root (or of a file, for "file"), through ctl_call so that a daemon
 * that does not answer cannot hang us. ctl_format and ctl_report parse and
 * print the replies, ctl_live holds the commands that follow the daemon
 * over time (watch, scan), ctl_store the store report (of a state
 * directory, or of the one a mount's daemon names) and ctl_cli what every
 * command shares.
 *
 * Exit status: 0 success, 1 error (named on stderr), 2 usage error.
 */
#include "config.h"
#include "ctl_call.h"
#include "ctl_cli.h"
#include "ctl_format.h"
#include "ctl_help.h"
#include "ctl_live.h"
#include "ctl_report.h"
#include "ctl_store.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct command {
	const char *name;
	int (*run)(int argc, char **argv);
};

static const struct command *find_command(const char *name);

/* ---- stats ------------------------------------------------------------- */

static int stats_format;   /* 0 human, CTL_OPT_JSON, CTL_OPT_PROMETHEUS */

static int stats_option(int opt, const char *arg)
{
	if (stats_format && stats_format != opt) {
		ctl_usage_error("stats", "%s", "--json and --prometheus exclude "
				"each other");
		return 1;
	}
	stats_format = opt;
	return 0;
}

/*
 * The label wants an absolute, clean path. realpath() would look at the
 * mount, which may hang, so the path is cleaned as text: "." and empty
 * components go, ".." takes the previous one away.
 */
static char *absolute_path(const char *path)
{
	char cwd[PATH_MAX], *joined, *out, *comp, *save = NULL;
	size_t len = 0;

	if (path[0] == '/' || !getcwd(cwd, sizeof(cwd)))
		joined = strdup(path);
	else if (asprintf(&joined, "%s/%s", cwd, path) < 0)
		joined = NULL;
	if (!joined)
		return NULL;
	out = malloc(strlen(joined) + 2);
	if (!out)
		goto out_free_joined;
	for (comp = strtok_r(joined, "/", &save); comp;
	     comp = strtok_r(NULL, "/", &save)) {
		if (!strcmp(comp, "."))
			continue;
		if (!strcmp(comp, "..")) {
			while (len && out[--len] != '/')
				;
			continue;
		}
		out[len++] = '/';
		strcpy(out + len, comp);
		len += strlen(comp);
		out[len] = '\0';
	}
	if (!len)
		out[len++] = '/';
	out[len] = '\0';
out_free_joined:
	free(joined);
	return out;
}

static int cmd_stats(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, CTL_OPT_JSON },
		{ "prometheus", no_argument, NULL, CTL_OPT_PROMETHEUS },
		{ 0 },
	};
	struct ctl_kvlist st;
	char *version = NULL, *label = NULL;
	const char *mount;
	int ret;

	ret = ctl_parse_options("stats", argc, argv, "", opts, stats_option);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("stats", argc, argv, 1, 1))
		return CTL_EXIT_USAGE;
	mount = argv[optind];
	ret = ctl_open_mount(mount, &version);
	if (ret)
		return ret;
	ret = ctl_fetch_kv(mount, CTL_XA_STATS, true, &st);
	if (ret)
		goto out_free_version;
	if (stats_format == CTL_OPT_JSON) {
		ctl_fmt_stats_json(stdout, &st);
	} else if (stats_format == CTL_OPT_PROMETHEUS) {
		label = absolute_path(mount);
		ctl_fmt_stats_prometheus(stdout, label ? label : mount, &st);
		free(label);
	} else {
		ctl_fmt_stats_human(stdout, mount, version, &st);
	}
	ret = ctl_finish_output();
	ctl_kvlist_free(&st);
out_free_version:
	free(version);
	return ret;
}

/* ---- histogram --------------------------------------------------------- */

static int cmd_histogram(int argc, char **argv)
{
	struct ctl_hist_row *rows;
	const char *mount;
	unsigned bad = 0;
	char *text;
	size_t n;
	int ret;

	ret = ctl_parse_options("histogram", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("histogram", argc, argv, 1, 1))
		return CTL_EXIT_USAGE;
	mount = argv[optind];
	ret = ctl_open_mount(mount, NULL);
	if (ret)
		return ret;
	ret = ctl_getxattr(mount, CTL_XA_HISTOGRAM, ctl_timeout_ms(), &text, NULL);
	if (ret)
		return ctl_call_failed(mount, ret);
	ret = ctl_parse_histogram(text, &rows, &n, &bad);
	free(text);
	if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: malformed reply from the daemon (%s, "
			"line %u)\n", ctl_prog, mount, CTL_XA_HISTOGRAM, bad);
		return CTL_EXIT_ERROR;
	}
	if (ret)
		return ctl_call_failed(mount, ret);
	ctl_fmt_histogram(stdout, rows, n);
	free(rows);
	return ctl_finish_output();
}

/* ---- file -------------------------------------------------------------- */

/* In the child: a directory or device gets a clear error instead of
 * whatever its getxattr says. */
static int file_child(void *arg, struct ctl_buf *out)
{
	const char *path = arg;
	struct stat sb;

	if (stat(path, &sb) < 0)
		return errno;
	if (S_ISDIR(sb.st_mode))
		return EISDIR;
	if (!S_ISREG(sb.st_mode))
		return EINVAL;
	return ctl_read_xattr(path, CTL_XA_FILE, out);
}

static int report_file(const char *path, bool first)
{
	struct ctl_file_report r;
	unsigned bad = 0;
	char *text;
	int ret;

	ret = ctl_call(file_child, (void *)path, ctl_timeout_ms(), &text, NULL);
	if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: not a regular file\n", ctl_prog, path);
		return CTL_EXIT_ERROR;
	}
	if (ctl_not_samepage(ret)) {
		fprintf(stderr, "%s: %s: not a file on a samepage mount\n",
			ctl_prog, path);
		return CTL_EXIT_ERROR;
	}
	if (ret)
		return ctl_call_failed(path, ret);
	ret = ctl_parse_file(text, &r, &bad);
	free(text);
	if (ret == -EINVAL) {
		fprintf(stderr, "%s: %s: malformed reply from the daemon (%s, "
			"line %u)\n", ctl_prog, path, CTL_XA_FILE, bad);
		return CTL_EXIT_ERROR;
	}
	if (ret)
		return ctl_call_failed(path, ret);
	if (!first)
		putchar('\n');
	ctl_fmt_file(stdout, path, &r);
	ctl_file_report_free(&r);
	return CTL_EXIT_OK;
}

static int cmd_file(int argc, char **argv)
{
	int ret, status = CTL_EXIT_OK;
	bool first = true;

	ret = ctl_parse_options("file", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("file", argc, argv, 1, -1))
		return CTL_EXIT_USAGE;
	for (; optind < argc; optind++) {
		if (report_file(argv[optind], first))
			status = CTL_EXIT_ERROR;
		else
			first = false;
	}
	ret = ctl_finish_output();
	return status ? status : ret;
}

/* ---- get / set --------------------------------------------------------- */

static const char known_settings[] = "run, pages_to_scan, sleep_millisecs, "
	"max_page_sharing, use_zero_pages, smart_scan, cache_size";

static int cmd_get(int argc, char **argv)
{
	const struct ctl_kv *kv;
	struct ctl_kvlist knobs;
	const char *mount;
	int ret;

	ret = ctl_parse_options("get", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("get", argc, argv, 1, 2))
		return CTL_EXIT_USAGE;
	mount = argv[optind];
	ret = ctl_open_mount(mount, NULL);
	if (ret)
		return ret;
	ret = ctl_fetch_kv(mount, CTL_XA_KNOBS, false, &knobs);
	if (ret)
		return ret;
	if (optind + 1 == argc) {
		ctl_fmt_knobs(stdout, &knobs);
	} else {
		kv = ctl_kv_find(&knobs, argv[optind + 1]);
		if (!kv) {
			fprintf(stderr, "%s: %s: no setting named '%s' (known: "
				"%s)\n", ctl_prog, mount, argv[optind + 1],
				known_settings);
			ret = CTL_EXIT_ERROR;
		} else {
			printf("%s\n", kv->str);
		}
	}
	ctl_kvlist_free(&knobs);
	return ret ? ret : ctl_finish_output();
}

/* Turn what a user types into what the daemon takes: sizes with suffixes
 * become bytes, yes/no/on/off become 1/0. NULL on a bad value. */
static char *setting_value(const char *key, const char *value)
{
	static const char *const yes[] = { "yes", "on", "true", NULL };
	static const char *const no[] = { "no", "off", "false", NULL };
	char *out = NULL;
	uint64_t bytes;
	int i;

	if (!strcmp(key, "cache_size")) {
		if (ctl_parse_size(value, &bytes))
			return NULL;
		if (asprintf(&out, "%s=%" PRIu64, key, bytes) < 0)
			return NULL;
		return out;
	}
	for (i = 0; yes[i]; i++)
		if (!strcasecmp(value, yes[i]))
			value = "1";
	for (i = 0; no[i]; i++)
		if (!strcasecmp(value, no[i]))
			value = "0";
	if (asprintf(&out, "%s=%s", key, value) < 0)
		return NULL;
	return out;
}

static int cmd_set(int argc, char **argv)
{
	const char *mount;
	char **values;
	int i, n, ret;

	ret = ctl_parse_options("set", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("set", argc, argv, 2, -1))
		return CTL_EXIT_USAGE;
	mount = argv[optind];
	n = argc - optind - 1;
	values = calloc((size_t)n, sizeof(*values));
	if (!values) {
		fprintf(stderr, "%s: %s\n", ctl_prog, strerror(ENOMEM));
		return CTL_EXIT_ERROR;
	}
	/* Check every argument before changing anything. */
	ret = CTL_EXIT_OK;
	for (i = 0; i < n && !ret; i++) {
		char *arg = argv[optind + 1 + i], *eq = strchr(arg, '=');

		if (!eq || eq == arg || !eq[1]) {
			ctl_usage_error("set", "expected KEY=VALUE, got '%s'", arg);
			ret = CTL_EXIT_USAGE;
			break;
		}
		*eq = '\0';
		values[i] = setting_value(arg, eq + 1);
		*eq = '=';
		if (!values[i]) {
			ctl_usage_error("set", "invalid value in '%s' (a size "
					"such as 512M or 2G)", arg);
			ret = CTL_EXIT_USAGE;
		}
	}
	if (!ret)
		ret = ctl_open_mount(mount, NULL);
	for (i = 0; i < n && !ret; i++) {
		int err = ctl_setxattr(mount, CTL_XA_SET, values[i], ctl_timeout_ms());

		if (err == -EPERM || err == -EACCES) {
			fprintf(stderr, "%s: %s: permission denied: only root "
				"or the user who mounted may change settings\n",
				ctl_prog, mount);
			ret = CTL_EXIT_ERROR;
		} else if (err == -EINVAL) {
			const char *arg = argv[optind + 1 + i];

			if (!strncmp(arg, "cache_size=", 11))
				fprintf(stderr, "%s: %s: invalid setting '%s' "
					"(at least 1M)\n", ctl_prog, mount, arg);
			else
				fprintf(stderr, "%s: %s: invalid setting '%s' "
					"(known: %s)\n", ctl_prog, mount, arg,
					known_settings);
			ret = CTL_EXIT_ERROR;
		} else if (err) {
			ret = ctl_call_failed(mount, err);
		}
	}
	for (i = 0; i < n; i++)
		free(values[i]);
	free(values);
	return ret;
}

/* ---- store ------------------------------------------------------------- */

/*
 * The state directory of the mount at path, asked of its daemon: 0 and
 * *dir (to be freed), or 0 and *dir NULL when path is not the root of a
 * samepage mount (then it is taken for a state directory itself), or an
 * exit code after a message.
 */
static int mount_state_dir(const char *path, char **dir)
{
	char *text = NULL;
	size_t len = 0;
	int ret;

	*dir = NULL;
	ret = ctl_getxattr(path, CTL_XA_STATE_DIR, ctl_timeout_ms(), &text,
			   &len);
	if (ret == -EPERM) {
		fprintf(stderr, "%s: %s: permission denied: only root or the "
			"user who mounted may read the store of a mount\n",
			ctl_prog, path);
		return CTL_EXIT_ERROR;
	}
	if (ret == -ETIMEDOUT || ret == -EINTR)
		return ctl_call_failed(path, ret);
	if (ret)
		return CTL_EXIT_OK;     /* not a mount: a directory, or none */
	if (len && text[len - 1] == '\n')
		text[--len] = '\0';
	if (!len || text[0] != '/' || strlen(text) != len) {
		fprintf(stderr, "%s: %s: malformed reply from the daemon (%s)\n",
			ctl_prog, path, CTL_XA_STATE_DIR);
		free(text);
		return CTL_EXIT_ERROR;
	}
	*dir = text;
	return CTL_EXIT_OK;
}

static int cmd_store(int argc, char **argv)
{
	const char *arg;
	char *dir;
	int ret;

	ret = ctl_parse_options("store", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("store", argc, argv, 1, 1))
		return CTL_EXIT_USAGE;
	arg = argv[optind];
	ret = mount_state_dir(arg, &dir);
	if (ret)
		return ret;
	ret = ctl_store_report(stdout, ctl_prog, dir ? dir : arg,
			       dir ? arg : NULL);
	free(dir);
	if (ret)
		return CTL_EXIT_ERROR;
	return ctl_finish_output();
}

/* ---- help -------------------------------------------------------------- */

static int cmd_help(int argc, char **argv)
{
	int ret;

	ret = ctl_parse_options("help", argc, argv, "", NULL, NULL);
	if (ret >= 0)
		return ret;
	if (!ctl_want_args("help", argc, argv, 0, 1))
		return CTL_EXIT_USAGE;
	if (optind == argc)
		return ctl_show_help(NULL);
	if (!find_command(argv[optind])) {
		ctl_usage_error("help", "unknown command '%s'", argv[optind]);
		return CTL_EXIT_USAGE;
	}
	return ctl_show_help(argv[optind]);
}

static const struct command commands[] = {
	{ "stats", cmd_stats },
	{ "histogram", cmd_histogram },
	{ "file", cmd_file },
	{ "watch", ctl_cmd_watch },
	{ "get", cmd_get },
	{ "set", cmd_set },
	{ "scan", ctl_cmd_scan },
	{ "store", cmd_store },
	{ "help", cmd_help },
};

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "timeout", required_argument, NULL, CTL_OPT_TIMEOUT },
		{ 0 },
	};
	const struct command *c;
	char buf[3];
	int opt;

	opterr = 0;
	/* '+': stop at the command, whose options are its own. */
	while ((opt = getopt_long(argc, argv, "+:hV", opts, NULL)) != -1) {
		switch (opt) {
		case 'h':
			return ctl_show_help(NULL);
		case 'V':
			printf("samepagectl %s\n", SAMEPAGE_VERSION);
			return ctl_finish_output();
		case CTL_OPT_TIMEOUT:
			if (!ctl_set_timeout(NULL, optarg))
				return CTL_EXIT_USAGE;
			break;
		case ':':
			ctl_usage_error(NULL, "option '%s' needs a value",
					argv[optind - 1]);
			return CTL_EXIT_USAGE;
		default:
			ctl_usage_error(NULL, "unknown option '%s'",
					ctl_bad_option(argv, buf));
			return CTL_EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		ctl_usage_error(NULL, "%s", "missing command");
		return CTL_EXIT_USAGE;
	}
	c = find_command(argv[optind]);
	if (!c) {
		ctl_usage_error(NULL, "unknown command '%s'", argv[optind]);
		return CTL_EXIT_USAGE;
	}
	return c->run(argc - optind, argv + optind);
}
