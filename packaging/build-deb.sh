#!/usr/bin/env bash
# Builds the Debian package: target/debian/autohealer_<version>-1_<arch>.deb (under
# $CARGO_TARGET_DIR when set). Needs cargo-deb: cargo install cargo-deb --locked
#
# cargo deb packs files; this script makes the ones that are generated or rewritten for the
# package, in target/deb-assets/ (Cargo.toml's [package.metadata.deb] names them):
#   - completions and man pages, from the release binary (`autohealer completions`, `man --dir`);
#   - the units and example drop-ins with ExecStart at /usr/bin/autohealer: the repository's
#     start /usr/local/bin/autohealer, where a manual install puts a locally built binary
#     (README "Install under systemd"); a package installs into /usr/bin, never /usr/local;
#   - the map, whose first line names the schema by its installed path, so editors find it from
#     /etc/autohealer and from the /tmp copy `sudoedit` edits.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi

cargo build --release --locked
bin="${CARGO_TARGET_DIR:-target}/release/autohealer"
out=target/deb-assets
rm -rf "$out"
mkdir -p "$out/completions" "$out/man" "$out/systemd" "$out/examples"

"$bin" completions bash > "$out/completions/autohealer"
"$bin" completions zsh > "$out/completions/_autohealer"
"$bin" completions fish > "$out/completions/autohealer.fish"
"$bin" man --dir "$out/man"    # cargo deb gzips pages under usr/share/man

to_usr_bin() {
  sed 's|/usr/local/bin/autohealer|/usr/bin/autohealer|g' "$1" > "$2"
  if grep -q /usr/local "$2"; then
    echo "build-deb.sh: $2 still names /usr/local" >&2
    exit 1
  fi
}
for unit in autohealer.service autohealer.socket; do
  to_usr_bin "systemd/$unit" "$out/systemd/$unit"
done
for example in systemd/autohealer.service.d/*.example; do
  to_usr_bin "$example" "$out/examples/$(basename "$example")"
done

schema_line='# yaml-language-server: $schema=reflex_map.schema.json'
if [ "$(head -n 1 reflex_map.yml)" != "$schema_line" ]; then
  echo "build-deb.sh: reflex_map.yml does not start with: $schema_line" >&2
  exit 1
fi
{
  echo '# yaml-language-server: $schema=/usr/share/autohealer/reflex_map.schema.json'
  tail -n +2 reflex_map.yml
} > "$out/reflex_map.yml"
"$bin" check "$out/reflex_map.yml" >/dev/null

# Stripped binary; its debug symbols go to a separate -dbgsym.ddeb, as Debian ships them.
cargo deb --no-build --locked --dbgsym "$@"
