# Shared by the stand-ins: record the call, optionally sleep or fail on request.
#   STANDIN_ROOT  the --root of the bootstrap under test (effects land under it)
#   STANDIN_LOG   one line per call: "<name> <args…>"; the environment goes to $STANDIN_LOG.env
#   STANDIN_FAIL  space-separated "name:arg" pairs that fail (e.g. "modprobe:br_netfilter")
#   STANDIN_SLEEP space-separated "name:arg=seconds" pairs that sleep before acting
#   STANDIN_SIGNAL_PARENT  "name:arg=SIGNAL" pairs: send SIGNAL to the caller (bootstrap),
#                 ignore the SIGTERM it passes on, and finish normally (a step in flight
#                 that completes)
set -eu
standin_name=$(basename "$0")
: "${STANDIN_ROOT:?STANDIN_ROOT must be set}"
: "${STANDIN_LOG:?STANDIN_LOG must be set}"
printf '%s' "$standin_name" >> "$STANDIN_LOG"
for a in "$@"; do printf ' %s' "$a" >> "$STANDIN_LOG"; done
printf '\n' >> "$STANDIN_LOG"
{ echo "--- $standin_name $*"; env; } >> "$STANDIN_LOG.env"

for pair in ${STANDIN_SLEEP:-}; do
  case "$pair" in
    "$standin_name:"*"="*)
      want=${pair%%=*}; secs=${pair#*=}
      for a in "$@"; do if [ "$standin_name:$a" = "$want" ]; then sleep "$secs"; fi; done ;;
  esac
done
for pair in ${STANDIN_SIGNAL_PARENT:-}; do
  case "$pair" in
    "$standin_name:"*"="*)
      want=${pair%%=*}; sig=${pair#*=}
      for a in "$@"; do
        if [ "$standin_name:$a" = "$want" ]; then
          trap '' TERM INT; kill -s "$sig" "$PPID"; sleep 0.3
        fi
      done ;;
  esac
done
standin_should_fail() {
  for pair in ${STANDIN_FAIL:-}; do
    for a in "$@"; do [ "$pair" = "$standin_name:$a" ] && return 0; done
  done
  return 1
}
standin_usage() { echo "$standin_name: $*" >&2; exit 2; }
