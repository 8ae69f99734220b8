#!/usr/bin/env bash
# Gathers everything the savepointd image holds into a directory, so that its runtime stage can be
# `FROM scratch`: the binary (stripped), the shared libraries it links as `ldd` finds them, the CA bundle,
# and a passwd/group entry for the non-root user 65532 the Helm chart runs it as.
#
#   scripts/image-rootfs.sh BINARY OUT_DIR
#
# The Dockerfile's build stage runs it on the release build; CI runs it on the machine's binary and builds
# the same image without pulling any base image.
set -euo pipefail

if [[ $# -ne 2 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 BINARY OUT_DIR" >&2
    exit 2
fi
binary=$1
out=$2

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
install -m 0755 "$binary" "$out/usr/local/bin/savepointd"
# Debug information is most of an unstripped binary; the image needs none of it.
strip --strip-all "$out/usr/local/bin/savepointd"

# Every library the dynamic loader resolves, and the loader itself, at the paths it looks them up;
# executable, as the kernel needs the loader to be.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
    while read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$out$lib"
    done

# reqwest and kube bring their own roots, but a platform's tls.caFile may point at the system bundle.
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
