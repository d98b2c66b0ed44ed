#!/usr/bin/env bash
# Packages the MOTFM DICOM application as a container (see deploy_app/README.md, "Packaging").
#
#   bash deploy_app/package.sh context OUT   the MONAI Application Package build context, written offline by the
#                                            pinned packager; build it where there is network (and a GPU base):
#                                            docker build --build-arg UID=1000 --build-arg GID=1000 \
#                                              --build-arg UNAME=holoscan --build-arg GPU_TYPE=dgpu -t TAG OUT
#   bash deploy_app/package.sh image         a CPU-only image of the same layout, built offline (debootstrap base,
#                                            local wheelhouse, no network); prints its tag; reused while its inputs
#                                            are unchanged
#   bash deploy_app/package.sh wheelhouse    the wheelhouse of deploy_app/requirements.txt (CPU torch); prints its path
#   bash deploy_app/package.sh dockerd       starts a Docker daemon unless one answers; prints DOCKER_HOST and its PID
#
# Environment: PYTHON (a Python with deploy_app/requirements.txt installed; default: python3), MOTFM_MAP_CACHE
# (wheelhouse, base image root, build context and the started daemon's data; default: ~/.cache/motfm-map),
# MOTFM_DEBIAN_MIRROR (default: the Debian mirror apt uses). Exit status 77: the image cannot be built here (no
# Docker, no root, no Debian mirror, no Python 3.11 or CPU torch wheel for the wheelhouse); 1: any other failure.
set -euo pipefail
shopt -s inherit_errexit # failures inside $(...) stop the script too

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE=${MOTFM_MAP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/motfm-map}
BASE_PACKAGES=python3,jq # the image's Debian packages beyond minbase: the app's Python, jq for the MAP tools script
IMAGE=motfm-dicom-cpu
export DOCKER_BUILDKIT=0 # the legacy builder: Debian bookworm's docker.io has no buildx

fail() { echo "error: $*" >&2; exit 1; }
cannot_run() { echo "error: the image cannot be built here: $*" >&2; exit 77; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

# Installs Debian packages whose command is missing: pairs of COMMAND PACKAGE.
need() {
    local missing=()
    while [ $# -gt 0 ]; do command -v "$1" > /dev/null || missing+=("$2"); shift 2; done
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing ${missing[*]}" >&2
    (as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" > /dev/null) || cannot_run "could not install ${missing[*]}"
}

# Makes DOCKER_HOST point at a Docker daemon that answers, starting one (data in $CACHE) if none does; sets
# DOCKERD_PID when it started one.
start_dockerd() {
    DOCKERD_PID=""
    if command -v docker > /dev/null && docker info > /dev/null 2>&1; then return; fi
    [ "$(id -u)" -eq 0 ] || cannot_run "no Docker daemon answers, and starting one needs root"
    need docker docker.io dockerd docker.io
    mkdir -p "$CACHE"
    export DOCKER_HOST="unix://$CACHE/docker.sock"
    if docker info > /dev/null 2>&1; then return; fi # one started earlier from this cache
    # no bridge or iptables: containers run with --network none
    setsid dockerd --iptables=false --bridge=none --data-root "$CACHE/docker" --exec-root "$CACHE/exec" \
        --pidfile "$CACHE/dockerd.pid" -H "$DOCKER_HOST" > "$CACHE/dockerd.log" 2>&1 < /dev/null &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info > /dev/null 2>&1 && return
        kill -0 "$DOCKERD_PID" 2> /dev/null || cannot_run "dockerd exited: $(tail -n 3 "$CACHE/dockerd.log")"
        sleep 1
    done
    kill "$DOCKERD_PID"
    cannot_run "dockerd did not answer within 60 s: $(tail -n 3 "$CACHE/dockerd.log")"
}

stop_dockerd() {
    [ -n "${DOCKERD_PID:-}" ] || return 0
    kill "$DOCKERD_PID" && while kill -0 "$DOCKERD_PID" 2> /dev/null; do sleep 0.2; done
}

# The Debian mirror apt uses (its bookworm main package list, else its first non-security one).
debian_mirror() {
    local lists mirror=${MOTFM_DEBIAN_MIRROR:-}
    lists=$(apt-cache policy 2> /dev/null | awk '$4 == "amd64" && $5 == "Packages" && $3 ~ /\/main$/ && $2 !~ /security/')
    [ -n "$mirror" ] || mirror=$(awk '$3 == "bookworm/main" {print $2; exit}' <<< "$lists")
    [ -n "$mirror" ] || mirror=$(awk '{print $2; exit}' <<< "$lists")
    [ -n "$mirror" ] || cannot_run "no Debian mirror found in apt's sources: set MOTFM_DEBIAN_MIRROR"
    echo "$mirror"
}

# Imports a Debian bookworm root file system (minbase + $BASE_PACKAGES) as a Docker image; prints its tag.
base_image() {
    local tag
    tag="motfm-map-base:bookworm-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
    if ! docker image inspect "$tag" > /dev/null 2>&1; then
        as_root true 2> /dev/null || cannot_run "the base image is made by debootstrap, which needs root"
        need debootstrap debootstrap
        local rootfs="$CACHE/rootfs" mirror
        mirror=$(debian_mirror)
        as_root rm -rf "$rootfs"
        echo "debootstrap bookworm from $mirror" >&2
        as_root debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" \
            > "$CACHE/debootstrap.log" 2>&1 || cannot_run "debootstrap failed: $(tail -n 2 "$CACHE/debootstrap.log")"
        as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        as_root tar -C "$rootfs" -c . | docker import - "$tag" > /dev/null
        as_root rm -rf "$rootfs"
    fi
    echo "$tag"
}

# Builds (once per requirements.txt) the wheels of deploy_app/requirements.txt and pip's own; prints the folder.
wheelhouse() {
    local requirements="$ROOT/deploy_app/requirements.txt" dir
    dir="$CACHE/wheelhouse-$(sha256sum < "$requirements" | cut -c1-12)"
    if [ ! -d "$dir" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
            cannot_run "the image's Python is Debian bookworm's 3.11: set PYTHON to a Python 3.11 (not $("$PYTHON" -V))"
        mkdir -p "$CACHE"
        rm -rf "$dir.partial"
        "$PYTHON" -m pip wheel -q --disable-pip-version-check -w "$dir.partial" -r "$requirements" pip \
            > "$CACHE/wheelhouse.log" 2>&1 || cannot_run "could not build the wheelhouse of $requirements: $(tail -n 3 "$CACHE/wheelhouse.log")"
        # the image is CPU-only: PyPI's torch for Linux is the CUDA build
        ls "$dir.partial"/torch-*+cpu-*.whl > /dev/null 2>&1 ||
            cannot_run "$requirements: pip chose a torch wheel that is not a CPU build ($(cd "$dir.partial" && ls torch-*)); put the CPU wheel where pip finds it first (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or --find-links)"
        mv "$dir.partial" "$dir"
    fi
    echo "$dir"
}

# The package's model folder: the shipped bundle's configs, code and flow model, in one sub-folder.
model_folder() {
    local models="$1/motfm_bundle"
    rm -rf "$1"
    mkdir -p "$models/models"
    cp -r "$ROOT/bundle/configs" "$ROOT/bundle/scripts" "$models/"
    cp "$ROOT/bundle/models/model.pt" "$models/models/"
    find "$1" -name __pycache__ -prune -exec rm -rf {} +
}

# A hash of everything that goes into the image.
inputs_hash() {
    (cd "$ROOT" && find deploy_app bundle/configs bundle/scripts bundle/models/model.pt -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum;
        echo "$BASE_PACKAGES") | sha256sum | cut -c1-12
}

build_image() {
    local tag base wheels install context="$CACHE/context"
    mkdir -p "$CACHE"
    start_dockerd
    trap stop_dockerd EXIT
    tag="$IMAGE:$(inputs_hash)"
    if docker image inspect "$tag" > /dev/null 2>&1; then echo "$tag"; return; fi
    base=$(base_image)
    wheels=$(wheelhouse)
    model_folder "$CACHE/models"
    "$PYTHON" "$ROOT/deploy_app/packaging/map_context.py" "$context" "$CACHE/models" > /dev/null
    cp -al "$wheels" "$context/wheelhouse" # hard links: the build context's copy costs nothing
    echo "building $tag (no network)" >&2
    : > "$CACHE/build.log"
    # the installing stage is tagged too, so that the next build of the same wheelhouse reuses it
    install="$IMAGE:install-${wheels##*-}"
    for target in "--target install -t $install" "-t $tag"; do
        # shellcheck disable=SC2086 # target holds two options
        docker build --force-rm --network none --build-arg BASE="$base" -f "$context/Dockerfile.cpu" $target "$context" \
            >> "$CACHE/build.log" 2>&1 || fail "docker build of $context/Dockerfile.cpu failed: $(tail -n 5 "$CACHE/build.log")"
    done
    docker tag "$tag" "$IMAGE:latest"
    # earlier builds go: their images (layers the new ones share stay) and wheelhouses
    docker images "$IMAGE" --format '{{.Repository}}:{{.Tag}}' |
        { grep -v -x -e "$tag" -e "$IMAGE:latest" -e "$install" || true; } | xargs -r docker rmi > /dev/null
    find "$CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -path "$wheels" -exec rm -rf {} +
    rm -rf "$context" "$CACHE/models"
    echo "$tag"
}

case "${1:-}" in
    context)
        [ $# -eq 2 ] || fail "usage: bash deploy_app/package.sh context OUT"
        staging=$(mktemp -d)
        trap 'rm -rf "$staging"' EXIT
        model_folder "$staging/models"
        tag=$("$PYTHON" "$ROOT/deploy_app/packaging/map_context.py" "$2" "$staging/models")
        echo "wrote $2; build the package where there is network (the NVIDIA CUDA base image) with:"
        echo "  docker build --build-arg UID=1000 --build-arg GID=1000 --build-arg UNAME=holoscan --build-arg GPU_TYPE=dgpu -t $tag $2"
        ;;
    image) build_image ;;
    wheelhouse) wheelhouse ;;
    dockerd)
        start_dockerd
        echo "DOCKER_HOST=${DOCKER_HOST:-} DOCKERD_PID=$DOCKERD_PID"
        ;;
    *) fail "usage: bash deploy_app/package.sh context OUT | image | wheelhouse | dockerd" ;;
esac
