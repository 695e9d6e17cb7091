#!/bin/sh
# Example exec adapter for jitgate: it only writes what it would do to a log file.
# Replace it with a program that really grants and revokes access. jitgate passes
# everything in JIT_* environment variables (never on the command line), waits for the
# exit status (0 = done), and keeps what `grant` prints on stdout as state for `revoke`
# (JIT_GRANT_STATE). Both actions must succeed when repeated for the same JIT_GRANT_ID.
set -eu
log="${JIT_DEMO_LOG:-/tmp/jitgate-demo.log}"
case "$JIT_ACTION" in
  grant)
    printf '%s grant  %s %s %s:%s until %s\n' "$(date -u +%FT%TZ)" "$JIT_REQUEST_ID" "$JIT_USER_ID" \
      "$JIT_RESOURCE" "$JIT_ROLE" "$JIT_EXPIRES_AT" >> "$log"
    echo "demo-$JIT_GRANT_ID"
    ;;
  revoke)
    printf '%s revoke %s %s %s:%s (state %s)\n' "$(date -u +%FT%TZ)" "$JIT_REQUEST_ID" "$JIT_USER_ID" \
      "$JIT_RESOURCE" "$JIT_ROLE" "${JIT_GRANT_STATE:-}" >> "$log"
    ;;
  *)
    echo "unknown JIT_ACTION: $JIT_ACTION" >&2
    exit 2
    ;;
esac
