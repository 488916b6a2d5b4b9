#!/usr/bin/env bash
# Smoke test of one running caption service: ready, and a photo in gives a caption, hashtags and
# alt text out, over both the JSON and the upload endpoint. The canary workflow runs it on the
# candidate's tag URL before any traffic moves; tests run it on a local `bentoml serve`.
#
#   infra/smoke_test.sh URL        e.g. https://candidate-snap2caption.snap2caption-prod.example.com
#
# Environment: SNAP2CAPTION_API_KEY   bearer key, when the service has auth on
#              SMOKE_TIMEOUT          seconds per request [120: a cold start loads the model]
# Needs curl and python3 (standard library only). Exit 0 = pass; otherwise says what failed.
set -euo pipefail

URL="${1:-}"
[[ -n "$URL" ]] || { echo "usage: $(basename "$0") URL" >&2; exit 2; }
URL="${URL%/}"
TIMEOUT="${SMOKE_TIMEOUT:-120}"
AUTH=()
[[ -z "${SNAP2CAPTION_API_KEY:-}" ]] || AUTH=(-H "Authorization: Bearer $SNAP2CAPTION_API_KEY")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fail() { echo "smoke_test: FAIL: $*" >&2; exit 1; }

# A 64x64 PNG made here (no image files or PIL needed): an orange square.
python3 - "$tmp" <<'EOF'
import base64, json, struct, sys, zlib

w = h = 64
raw = b"".join(b"\x00" + bytes((230, 120, 30)) * w for _ in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
open(f"{sys.argv[1]}/photo.png", "wb").write(png)
json.dump({"image": base64.b64encode(png).decode(), "tone": "casual", "num_hashtags": 5},
          open(f"{sys.argv[1]}/body.json", "w"))
EOF

status="$(curl -sS -o "$tmp/ready" -w '%{http_code}' -m "$TIMEOUT" "$URL/readyz")" || fail "$URL/readyz unreachable"
[[ "$status" == 200 ]] || fail "$URL/readyz answered $status: $(head -c 300 "$tmp/ready")"

check_caption() {  # FILE ENDPOINT
  python3 - "$1" "$2" <<'EOF' || exit 1
import json, sys

path, endpoint = sys.argv[1], sys.argv[2]
try:
    body = json.load(open(path))
except ValueError:
    sys.exit(f"smoke_test: FAIL: {endpoint} did not answer JSON: {open(path).read()[:300]}")
missing = [k for k in ("caption", "alt_text", "model_version", "request_id") if not body.get(k)]
if missing or not body.get("hashtags"):
    sys.exit(f"smoke_test: FAIL: {endpoint} answer lacks {missing or ['hashtags']}: {json.dumps(body)[:300]}")
print(f"smoke_test: {endpoint}: {body['caption']!r} {' '.join(body['hashtags'])} (model {body['model_version']})")
EOF
}

status="$(curl -sS -o "$tmp/json" -w '%{http_code}' -m "$TIMEOUT" "${AUTH[@]}" \
  -H 'content-type: application/json' --data-binary "@$tmp/body.json" "$URL/generate-caption")" ||
  fail "POST $URL/generate-caption: no answer"
[[ "$status" == 200 ]] || fail "POST /generate-caption answered $status: $(head -c 300 "$tmp/json")"
check_caption "$tmp/json" /generate-caption

status="$(curl -sS -o "$tmp/upload" -w '%{http_code}' -m "$TIMEOUT" "${AUTH[@]}" \
  -F "image=@$tmp/photo.png;type=image/png" -F tone=funny "$URL/generate-caption/upload")" ||
  fail "POST $URL/generate-caption/upload: no answer"
[[ "$status" == 200 ]] || fail "POST /generate-caption/upload answered $status: $(head -c 300 "$tmp/upload")"
check_caption "$tmp/upload" /generate-caption/upload

echo "smoke_test: PASS ($URL)"
