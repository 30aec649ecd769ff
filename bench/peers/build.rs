//! Reads the peer crates' resolved versions from this workspace's Cargo.lock
//! and hands them to the binary as `LOCKED_VERSION_<CRATE>` variables, so the
//! report names exactly what was built and cannot go stale.

use std::path::Path;

/// The crates whose versions the report names.
const REPORTED: [&str; 5] = ["cqrs-es", "postgres-es", "esrs", "disintegrate", "disintegrate-postgres"];

fn main() {
    let lock =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_else(|error| panic!("read {}: {error}", lock.display()));
    let packages = locked_packages(&text);
    for name in REPORTED {
        let versions: Vec<&str> =
            packages.iter().filter(|(locked, _)| *locked == name).map(|(_, version)| *version).collect();
        let [version] = versions[..] else {
            panic!("Cargo.lock holds {} versions of {name}, expected exactly one: {versions:?}", versions.len());
        };
        println!("cargo:rustc-env=LOCKED_VERSION_{}={version}", name.to_uppercase().replace('-', "_"));
    }
}

/// `(name, version)` of every `[[package]]` entry. Cargo writes each entry's
/// `name` line first and its `version` line right after.
fn locked_packages(text: &str) -> Vec<(&str, &str)> {
    let mut packages = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if line == "[[package]]" {
            name = None;
        } else if let Some(value) = quoted(line, "name") {
            name = Some(value);
        } else if let (Some(value), Some(package)) = (quoted(line, "version"), name.take()) {
            packages.push((package, value));
        }
    }
    packages
}

/// The quoted value of a `key = "value"` line.
fn quoted<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.strip_prefix(key)?.trim_start().strip_prefix('=')?.trim().strip_prefix('"')?.strip_suffix('"')
}
