#!/usr/bin/env bash
# Screenshot the Temporal Web UI page of the newest cancelled order (make screenshot).
# Needs the system running (make run; `ordersaga demo` makes a cancelled order) and
# Debian's chromium (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
API=${API:-http://127.0.0.1:8000}
OUT=${OUT:-docs/web-ui-cancelled-order.png}

if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
url=$(.venv/bin/python - "$API" <<'PY'
import sys, httpx
page = httpx.get(f"{sys.argv[1]}/orders", params={"status": "CANCELLED", "limit": 1}).json()
if not page["items"]:
    sys.exit("no cancelled order yet: run `ordersaga demo` first")
print(page["items"][0]["workflow_url"])
PY
)
mkdir -p "$(dirname "$OUT")"
# The flags keep Chromium off the network it cannot reach here.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$(mktemp -d)" --window-size=1400,1000 --virtual-time-budget=15000 \
  --screenshot="$OUT" "$url" 2>/dev/null
echo "$url -> $OUT"
