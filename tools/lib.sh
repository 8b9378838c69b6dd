# shellcheck shell=bash
# Shared by tools/demo and tools/test: progress lines, root check, Debian
# packages, meson build dirs. Source it from the repo root; needs bash.

SAMEPAGE_DEBS=(build-essential pkg-config meson ninja-build libfuse3-dev fuse3
	liburing-dev libxxhash-dev libssl-dev liblmdb-dev lmdb-utils fio xfsprogs
	attr python3 util-linux gnuplot-nox stress-ng clang)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
	[ "$(id -u)" -eq 0 ] || die "run $0 as root: mounting and package installs need it"
}

# Install the Debian packages that are missing; apt-get update only if any are.
install_deps() {
	local missing=() p
	for p in "${SAMEPAGE_DEBS[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		info "packages: all ${#SAMEPAGE_DEBS[@]} present"
		return 0
	fi
	command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
	info "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q || die "apt-get update failed"
	apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		die "apt-get install ${missing[*]} failed"
	# /dev/fuse comes with the fuse module; load it if the kernel has one.
	[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
}

# configure_build DIR [meson options...]: set up DIR, or reconfigure it so
# new options and newly added test files take effect.
configure_build() {
	local dir=$1 log rc=0
	shift
	log=$(mktemp)
	if [ -f "$dir/meson-private/coredata.dat" ]; then
		meson setup --reconfigure "$dir" "$@" >"$log" 2>&1 || rc=$?
	else
		rm -rf "$dir"
		meson setup "$dir" "$@" >"$log" 2>&1 || rc=$?
	fi
	[ $rc -eq 0 ] || cat "$log"
	rm -f "$log"
	return $rc
}

# find_exe BUILD NAME: the built program, at the top of the build dir or in
# the folder of its sources.
find_exe() {
	local b=$1 n=$2 c
	for c in "$b/$n" "$b/fs/$n" "$b/tools/$n"; do
		[ -x "$c" ] && { echo "$c"; return 0; }
	done
	return 1
}
