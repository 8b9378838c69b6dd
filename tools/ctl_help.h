/*
 * ctl_help: the --help text of samepagectl and of each of its commands.
 *
 * Owns only constant text, kept apart from the code so both stay short.
 * The man page samepagectl(1) says the same at greater length; change
 * them together.
 *
 * Locking: none (constant data). Errors: lookups return NULL for an
 * unknown command.
 */
#ifndef SAMEPAGE_CTL_HELP_H
#define SAMEPAGE_CTL_HELP_H

/* The tool's overview: commands, global options, exit status. */
extern const char ctl_help_main[];

/* "stats [--json|--prometheus] MOUNTPOINT", or NULL. */
const char *ctl_help_usage(const char *command);
/* What the command does, its options, an example; or NULL. */
const char *ctl_help_text(const char *command);

#endif
