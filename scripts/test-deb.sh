#!/usr/bin/env bash
# Builds the .deb (scripts/build-deb.sh), installs it with dpkg on this machine, checks
# what it installed (binary, man pages, completions, the unit passing systemd-analyze
# verify, the example config as a conffile), then removes and purges it and checks that
# it is gone. Needs root; refuses to run where bootstrap is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "test-deb: FAIL: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f '${Status}' bootstrap 2>/dev/null | grep -q installed || [ -e /usr/bin/bootstrap ]; then
  fail "bootstrap is installed here already; this test would remove it"
fi

start=$(date +%s)
log=$(mktemp)
installed=0
cleanup() {
  [ "$installed" -eq 0 ] || dpkg -P bootstrap >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT

scripts/build-deb.sh | tee "$log"
deb=$(tail -n 1 "$log")
[ -f "$deb" ] || fail "build-deb.sh did not print a .deb path (got '$deb')"
built=$(date +%s)

echo "== dpkg -i $deb"
installed=1
dpkg -i "$deb"
dpkg-query -W -f '${Status} ${Version}\n' bootstrap

echo "== installed files"
[ "$(command -v bootstrap)" = /usr/bin/bootstrap ] || fail "bootstrap is not /usr/bin/bootstrap on PATH"
/usr/bin/bootstrap version
/usr/bin/bootstrap version | grep -q "^bootstrap $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ||
  fail "bootstrap version does not report the package version"
# A minimal image may exclude man pages from dpkg (path-exclude); then they are absent
# by design and only the package's file list can be checked.
if grep -qs '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
  echo "test-deb: dpkg excludes /usr/share/man here; checking the package's file list instead"
  dpkg -L bootstrap | grep -qx /usr/share/man/man1/bootstrap.1.gz || fail "no bootstrap.1.gz in the package"
elif command -v man >/dev/null; then
  page=$(man -w bootstrap) || fail "man -w bootstrap found nothing"
  echo "man page: $page"
  [ "$page" = /usr/share/man/man1/bootstrap.1.gz ] || fail "man -w bootstrap gave $page"
  man -w bootstrap-up >/dev/null || fail "no man page for bootstrap-up"
  # Renders without groff errors.
  MANWIDTH=80 man bootstrap 2>&1 >/dev/null | { ! grep .; } || fail "man bootstrap printed warnings"
else
  [ -f /usr/share/man/man1/bootstrap.1.gz ] || fail "/usr/share/man/man1/bootstrap.1.gz is missing"
fi
for f in /usr/share/bash-completion/completions/bootstrap \
         /usr/share/zsh/vendor-completions/_bootstrap \
         /usr/share/fish/vendor_completions.d/bootstrap.fish \
         /usr/lib/systemd/system/bootstrap.service \
         /etc/bootstrap/config.yaml.example; do
  [ -f "$f" ] || fail "$f is missing"
  echo "ok: $f"
done
bash -n /usr/share/bash-completion/completions/bootstrap || fail "the bash completion does not parse"
# Loading the bash completion registers it for `bootstrap`.
bash -c 'source /usr/share/bash-completion/completions/bootstrap && complete -p bootstrap' ||
  fail "the bash completion does not register itself"
grep -qx /etc/bootstrap/config.yaml.example /var/lib/dpkg/info/bootstrap.conffiles ||
  fail "/etc/bootstrap/config.yaml.example is not a conffile"
# The example config, as installed, is a valid configuration.
root=$(mktemp -d)
/usr/bin/bootstrap --root "$root" --config /etc/bootstrap/config.yaml.example plan --print-config >/dev/null ||
  fail "the installed example config is rejected"
rmdir "$root"

echo "== systemd-analyze verify bootstrap.service"
# Other units on this machine may draw complaints of their own (no systemd running, a
# container's missing binaries); only lines about bootstrap.service count.
verify_status=0
verify=$(systemd-analyze verify /usr/lib/systemd/system/bootstrap.service 2>&1) || verify_status=$?
echo "${verify:-(no output)}"
if grep -q 'bootstrap\.service' <<<"$verify"; then
  fail "systemd-analyze verify complained about bootstrap.service"
fi
[ "$verify_status" -eq 0 ] || echo "test-deb: systemd-analyze exited $verify_status, over other units only"
grep -qx 'ExecStart=/usr/bin/bootstrap up' /usr/lib/systemd/system/bootstrap.service ||
  fail "the unit does not run /usr/bin/bootstrap up"

echo "== dpkg -r bootstrap"
dpkg -r bootstrap
[ ! -e /usr/bin/bootstrap ] || fail "/usr/bin/bootstrap is still there after dpkg -r"
[ ! -e /usr/share/man/man1/bootstrap.1.gz ] || fail "the man page is still there after dpkg -r"
[ ! -e /usr/lib/systemd/system/bootstrap.service ] || fail "the unit is still there after dpkg -r"
# A conffile stays until purge.
[ -f /etc/bootstrap/config.yaml.example ] || fail "dpkg -r removed the conffile (it should stay until purge)"
echo "== dpkg -P bootstrap"
dpkg -P bootstrap
installed=0
[ ! -e /etc/bootstrap/config.yaml.example ] || fail "the conffile is still there after dpkg -P"
! dpkg-query -W bootstrap >/dev/null 2>&1 || fail "dpkg still knows the package after purge"

end=$(date +%s)
echo "test-deb: ok ($deb; build $((built - start))s, install and checks $((end - built))s)"
