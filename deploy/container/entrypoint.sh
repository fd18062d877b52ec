#!/bin/sh
# The image's entry point: `gateway`, `worker-host`, or any command (e.g. `scribe status`).
set -eu
: "${RUN_DIR:=/run/scribe}"
mkdir -p "$RUN_DIR"
chmod 0700 "$RUN_DIR"
export RUN_DIR
case "${1:-gateway}" in
  gateway)
    shift || true
    exec python -m services.gateway "$@"
    ;;
  worker-host)
    # supervisord reads these when it expands worker-host.conf; a worker host needs a number of workers.
    : "${GPU_SCALE_WORKERS:=1}" "${GPU_SCALE_DEVICE_ID:=0}"
    export GPU_SCALE_WORKERS GPU_SCALE_DEVICE_ID GPU_SCALE_ENABLED="${GPU_SCALE_ENABLED:-true}"
    exec supervisord -c /opt/scribe/deploy/worker-host.conf
    ;;
  scribe)
    shift
    exec python -m services.cli.main "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
