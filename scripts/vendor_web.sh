#!/usr/bin/env bash
# Refreshes src/hearth/web/vendor from npm: the page's libraries as ES modules, pinned, with their
# licenses. Run by `make web-vendor`; the result is committed, so installs need no npm and no build.
set -euo pipefail

PREACT=10.29.8
HTM=3.1.1
MARKED=18.2.1
DOMPURIFY=3.5.0
HIGHLIGHT=11.12.0

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/src/hearth/web/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "npm is needed to refresh the vendored libraries" >&2; exit 1; }
(cd "$work" && npm pack --silent "preact@$PREACT" "htm@$HTM" "marked@$MARKED" \
    "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" >/dev/null)
for tarball in "$work"/*.tgz; do
    name="$(basename "$tarball" .tgz)"
    mkdir -p "$work/$name"
    tar xzf "$tarball" -C "$work/$name" --strip-components=1
done

rm -rf "$vendor"
mkdir -p "$vendor/licenses"
cp "$work/preact-$PREACT/dist/preact.module.js" "$vendor/preact.module.js"
# The hooks import the bare name "preact"; a relative path needs no import map (inline script).
sed 's#from"preact"#from"./preact.module.js"#' \
    "$work/preact-$PREACT/hooks/dist/hooks.module.js" >"$vendor/hooks.module.js"
grep -q 'from"./preact.module.js"' "$vendor/hooks.module.js" \
    || { echo "preact/hooks no longer imports \"preact\" as expected" >&2; exit 1; }
cp "$work/htm-$HTM/dist/htm.module.js" "$vendor/htm.module.js"
cp "$work/marked-$MARKED/lib/marked.esm.js" "$vendor/marked.esm.js"
cp "$work/dompurify-$DOMPURIFY/dist/purify.es.mjs" "$vendor/purify.module.js"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/es/highlight.min.js" "$vendor/highlight.min.js"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/styles/github.min.css" "$vendor/highlight-light.css"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/styles/github-dark.min.css" "$vendor/highlight-dark.css"
# Source maps are not shipped; their comments would make the browser ask for them.
sed -i '/^\/\/# sourceMappingURL=/d' "$vendor"/*.js

cp "$work/preact-$PREACT/LICENSE" "$vendor/licenses/preact.LICENSE"
cp "$work/htm-$HTM/LICENSE" "$vendor/licenses/htm.LICENSE"
cp "$work/marked-$MARKED/LICENSE" "$vendor/licenses/marked.LICENSE"
cp "$work/dompurify-$DOMPURIFY/LICENSE" "$vendor/licenses/dompurify.LICENSE"
cp "$work/highlightjs-cdn-assets-$HIGHLIGHT/LICENSE" "$vendor/licenses/highlight.js.LICENSE"
cat >"$vendor/VERSIONS" <<VERSIONS
preact $PREACT
htm $HTM
marked $MARKED
dompurify $DOMPURIFY
@highlightjs/cdn-assets $HIGHLIGHT
VERSIONS
echo "Vendored into $vendor:"
cat "$vendor/VERSIONS"
