# Sourced by the deploy scripts (from the repository root): workspace_version prints the
# `version` of Cargo.toml's [workspace.package], which both binaries and packages carry.
workspace_version() {
    awk '
        /^\[/ { in_pkg = ($0 == "[workspace.package]") }
        in_pkg && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }
    ' Cargo.toml
}
