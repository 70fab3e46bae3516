#!/usr/bin/env bash
# Serve the ipywidgets and MathJax JavaScript from the book itself, so the built HTML renders offline.
# The files come from the npm registry (npm pack verifies their integrity); they are not committed.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=book/_vendor_js
if [ -f "$dest/.complete" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to vendor the widget JavaScript (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && npm pack --silent @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 mathjax@3.2.2 >/dev/null 2>&1 )
mkdir -p "$tmp/out"
tar xzf "$tmp"/jupyter-widgets-html-manager-1.0.15.tgz -C "$tmp" && cp "$tmp"/package/dist/embed-amd.js "$tmp/out/" && cp "$tmp"/package/dist/*.woff* "$tmp/out/" 2>/dev/null || true
rm -rf "$tmp/package"
tar xzf "$tmp"/requirejs-2.3.8.tgz -C "$tmp" && cp "$tmp"/package/require.js "$tmp/out/"
rm -rf "$tmp/package"
tar xzf "$tmp"/mathjax-3.2.2.tgz -C "$tmp" && mkdir -p "$tmp/out/mathjax" && cp -r "$tmp"/package/es5/* "$tmp/out/mathjax/"
rm -rf "$dest" && mv "$tmp/out" "$dest" && touch "$dest/.complete"
echo "[js] vendored require.js, embed-amd.js and MathJax into $dest"
