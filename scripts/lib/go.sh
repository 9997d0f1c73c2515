# shellcheck shell=bash
# Find a Go toolchain for the scripts that build pinned binaries from Go modules
# (scripts/kube-build, scripts/virtctl-build). Sourced, not run.
#
#   GO=$(find_go [TOOLCHAIN_ROOT])   # TOOLCHAIN_ROOT defaults to $CACHE/toolchain
#
# Tries $GO, go on PATH, /usr/local/go; else the official toolchain module (golang.org/toolchain,
# what GOTOOLCHAIN=auto downloads) unpacked under TOOLCHAIN_ROOT. Any Go >= 1.21 will do: it
# switches itself to the version go.mod asks for. Call it under the caller's flock, since the
# fallback fetch writes into the cache.

GO_FALLBACK=go1.26.8   # fetched from the Go module proxy only when no Go >= 1.21 is installed

go_at_least_1_21() {
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1   # go1.26.8
  v=${v#go1.}; v=${v%%[.a-z]*}
  [ -n "$v" ] && [ "$v" -ge 21 ]
}

find_go() {
  local root=${1:-$CACHE/toolchain} g
  for g in "${GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$g" ] && [ -x "$g" ] && go_at_least_1_21 "$g"; then echo "$g"; return; fi
  done
  local dir=$root/$GO_FALLBACK arch
  arch=$(uname -m); arch=${arch/x86_64/amd64}; arch=${arch/aarch64/arm64}
  if [ ! -x "$dir/bin/go" ]; then
    echo "${0##*/}: no Go >= 1.21 found; fetching $GO_FALLBACK from the module proxy" >&2
    local proxy=${GOPROXY:-https://proxy.golang.org}; proxy=${proxy%%,*}; proxy=${proxy%%|*}
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    curl -fsSL "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_FALLBACK.linux-$arch.zip" -o "$dir.tmp/go.zip"
    python3 -m zipfile -e "$dir.tmp/go.zip" "$dir.tmp"
    chmod -R a+x "$dir.tmp"/golang.org/toolchain@*/bin "$dir.tmp"/golang.org/toolchain@*/pkg/tool
    rm -rf "$dir" && mv "$dir.tmp"/golang.org/toolchain@* "$dir" && rm -rf "$dir.tmp"
  fi
  echo "$dir/bin/go"
}
