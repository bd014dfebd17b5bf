#!/usr/bin/env bash
# Finds the onnxruntime C API headers libmicronet_ops is compiled against and prints the folder
# holding onnxruntime_c_api.h on stdout (progress goes to stderr). In order:
#   1. $ORT_INCLUDE_DIR
#   2. system headers (/usr/include/onnxruntime, /usr/local/include/onnxruntime, ...)
#   3. a copy fetched earlier into runtime_ops/third_party/libonnxruntime-dev/ (marked VERIFIED)
#   4. Debian 13 "trixie"'s libonnxruntime-dev (not in Debian 12): `apt-get download` from the
#      Debian mirror this system's apt sources already use, through a throw-away apt state/sources/
#      cache folder (nothing is installed, the system's apt state is untouched). apt verifies the
#      signed Release file and the .deb's hash against the index; this script also prints the
#      .deb's sha256 and checks it against the Packages entry, then unpacks it with dpkg-deb -x.
# Headers must declare ORT_API_VERSION >= MICRONET_ORT_API_VERSION (common/ort_api_version.h).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKG=libonnxruntime-dev
SUITE="${MICRONET_ORT_DEB_SUITE:-trixie}"
DEST="$HERE/third_party/$PKG"
DEFAULT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "[fetch_ort_headers] $*" >&2; }
die() { echo "fetch_ort_headers: error: $*" >&2; exit 1; }

MIN_API="$(sed -n 's/^#define MICRONET_ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "$HERE/common/ort_api_version.h")"
[ -n "$MIN_API" ] || die "cannot read MICRONET_ORT_API_VERSION from $HERE/common/ort_api_version.h"

api_version() { sed -n 's/^#define ORT_API_VERSION \([0-9][0-9]*\).*/\1/p' "$1/onnxruntime_c_api.h" 2>/dev/null | head -n 1; }
usable() {
  local v
  [ -f "$1/onnxruntime_c_api.h" ] || return 1
  v="$(api_version "$1")"
  [ -n "$v" ] && [ "$v" -ge "$MIN_API" ]
}

# 1. explicit folder
if [ -n "${ORT_INCLUDE_DIR:-}" ]; then
  usable "$ORT_INCLUDE_DIR" ||
    die "ORT_INCLUDE_DIR=$ORT_INCLUDE_DIR holds no onnxruntime_c_api.h with ORT_API_VERSION >= $MIN_API"
  log "using ORT_INCLUDE_DIR=$ORT_INCLUDE_DIR (C API $(api_version "$ORT_INCLUDE_DIR"))"
  echo "$ORT_INCLUDE_DIR"
  exit 0
fi

# 2. system headers
for d in /usr/include/onnxruntime /usr/local/include/onnxruntime /usr/include /usr/local/include; do
  if usable "$d"; then
    log "using system headers in $d (C API $(api_version "$d"))"
    echo "$d"
    exit 0
  elif [ -f "$d/onnxruntime_c_api.h" ]; then
    log "ignoring $d: C API $(api_version "$d") < $MIN_API"
  fi
done

# 3. fetched before
if [ -f "$DEST/VERIFIED" ] && usable "$DEST/usr/include/onnxruntime"; then
  log "using $DEST ($(tr '\n' ' ' < "$DEST/VERIFIED"))"
  echo "$DEST/usr/include/onnxruntime"
  exit 0
fi

# 4. fetch from Debian
for tool in apt-get apt-cache dpkg-deb dpkg sha256sum awk; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "no onnxruntime headers found and '$tool' is missing to fetch them; set ORT_INCLUDE_DIR to a folder with onnxruntime_c_api.h (C API >= $MIN_API)"
done
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
fi
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*) ;;
  *) die "no onnxruntime headers found; fetching them needs Debian's apt (this is '${ID:-unknown}'); set ORT_INCLUDE_DIR" ;;
esac
CODENAME="${VERSION_CODENAME:-}"

# The Debian mirror of the system's apt sources: the first enabled "deb" entry for this release's
# own suite (not -security / -updates, not a third-party repository) with component main.
find_mirror() {
  local files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
  [ "${#files[@]}" -gt 0 ] || return 0
  for f in "${files[@]}"; do
    case "$f" in
      *.sources)
        awk -v want="$CODENAME" -v alt="$SUITE" '
          function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/ && comps ~ /(^| )main( |$)/ && uris != "") {
              n = split(suites, s, " ")
              for (i = 1; i <= n; i++) if (s[i] == want || s[i] == alt) { split(uris, u, " "); print u[1] "|" signed; exit }
            }
            types = uris = suites = comps = signed = enabled = ""
          }
          /^[ \t]*#/ { next }
          /^[ \t]*$/ { flush(); next }
          /^[^ \t]/ {
            key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val; else if (key == "uris") uris = val
            else if (key == "suites") suites = val; else if (key == "components") comps = val
            else if (key == "signed-by") signed = val; else if (key == "enabled") enabled = tolower(val)
          }
          END { flush() }' "$f"
        ;;
      *)
        awk -v want="$CODENAME" -v alt="$SUITE" '
          $1 == "deb" {
            i = 2; signed = ""
            if ($i ~ /^\[/) {
              while (i <= NF) {
                opt = $i; gsub(/[\[\]]/, "", opt)
                if (opt ~ /^signed-by=/) { signed = opt; sub(/^signed-by=/, "", signed) }
                if ($i ~ /\]$/) { i++; break }
                i++
              }
            }
            uri = $i; suite = $(i + 1); main = 0
            for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
            if ((suite == want || suite == alt) && main) { print uri "|" signed; exit }
          }' "$f"
        ;;
    esac
  done
}
entry="$(find_mirror | head -n 1)"
[ -n "$entry" ] ||
  die "no Debian mirror for suite '${CODENAME:-?}' with component main in the apt sources (/etc/apt/sources.list*); set ORT_INCLUDE_DIR"
MIRROR="${entry%%|*}"
KEYRING="${entry#*|}"
case "$KEYRING" in
  /*) [ -f "$KEYRING" ] || KEYRING="$DEFAULT_KEYRING" ;;
  *) KEYRING="$DEFAULT_KEYRING" ;;  # absent, or an inline key block
esac
[ -f "$KEYRING" ] || die "Debian archive keyring $KEYRING not found (apt-get install debian-archive-keyring); set ORT_INCLUDE_DIR"
ARCH="$(dpkg --print-architecture)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/micronet-apt.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's download sandbox user (_apt) must reach partial/ folders
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/sources.list.d" "$tmp/preferences.d" "$tmp/dl"
: > "$tmp/sources.list"
: > "$tmp/preferences"
cat > "$tmp/sources.list.d/micronet-$SUITE.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE
Components: main
Architectures: $ARCH
Targets: Packages
Signed-By: $KEYRING
SOURCES
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp/dl"; fi
APT_OPTS=(
  -o "Dir::State::Lists=$tmp/lists"
  -o "Dir::Etc::SourceList=$tmp/sources.list"
  -o "Dir::Etc::SourceParts=$tmp/sources.list.d"
  -o "Dir::Etc::Preferences=$tmp/preferences"
  -o "Dir::Etc::PreferencesParts=$tmp/preferences.d"
  -o "Dir::Cache=$tmp/cache"
  -o "Dir::Cache::archives=$tmp/cache/archives"
)

log "fetching the signed $SUITE/main package index from $MIRROR (keyring $KEYRING)"
update_log="$tmp/update.log"
if ! apt-get "${APT_OPTS[@]}" -q update > "$update_log" 2>&1 ||
  grep -qE '^E: |^W: .*(Failed to fetch|GPG error|NO_PUBKEY|not signed|index files failed)' "$update_log"; then
  sed 's/^/  apt: /' "$update_log" >&2
  die "could not fetch and verify the $SUITE package index from $MIRROR (network, proxy or signature problem; see above); or set ORT_INCLUDE_DIR"
fi
record="$(apt-cache "${APT_OPTS[@]}" show "$PKG" 2>/dev/null | awk 'BEGIN{RS=""} NR==1 {print; exit}')"
[ -n "$record" ] || die "package $PKG not found in $SUITE/main at $MIRROR; set ORT_INCLUDE_DIR"
VERSION="$(printf '%s\n' "$record" | awk '/^Version:/ {print $2; exit}')"
WANT_SHA="$(printf '%s\n' "$record" | awk '/^SHA256:/ {print $2; exit}')"
[ -n "$VERSION" ] && [ -n "$WANT_SHA" ] || die "the $SUITE index entry of $PKG has no Version or SHA256"

log "downloading $PKG $VERSION (apt checks it against the signed index)"
if ! (cd "$tmp/dl" && apt-get "${APT_OPTS[@]}" -q download "$PKG=$VERSION") > "$tmp/download.log" 2>&1; then
  sed 's/^/  apt: /' "$tmp/download.log" >&2
  die "apt-get download $PKG=$VERSION failed"
fi
deb="$(find "$tmp/dl" -maxdepth 1 -name '*.deb' | head -n 1)"
[ -n "$deb" ] || die "apt-get download left no .deb"
GOT_SHA="$(sha256sum "$deb" | awk '{print $1}')"
log "sha256 $GOT_SHA  $(basename "$deb")"
[ "$GOT_SHA" = "$WANT_SHA" ] || die "sha256 of $(basename "$deb") is $GOT_SHA, the signed index says $WANT_SHA"
log "sha256 matches the Packages index entry"

dpkg-deb -x "$deb" "$tmp/unpacked" || die "dpkg-deb -x failed on $(basename "$deb")"
usable "$tmp/unpacked/usr/include/onnxruntime" ||
  die "$PKG $VERSION has no onnxruntime_c_api.h with ORT_API_VERSION >= $MIN_API"
printf 'package=%s\nversion=%s\nsuite=%s\nsha256=%s\napi=%s\n' "$PKG" "$VERSION" "$SUITE" "$GOT_SHA" \
  "$(api_version "$tmp/unpacked/usr/include/onnxruntime")" > "$tmp/unpacked/VERIFIED"
mkdir -p "$HERE/third_party"
rm -rf "$DEST" "$DEST.partial"
cp -a "$tmp/unpacked" "$DEST.partial"
mv "$DEST.partial" "$DEST"
log "unpacked $PKG $VERSION (C API $(api_version "$DEST/usr/include/onnxruntime")) into $DEST"
echo "$DEST/usr/include/onnxruntime"
