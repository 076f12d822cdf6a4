//! Compiles the upstream Kubernetes `generated.proto` files into one descriptor set
//! (`$OUT_DIR/k8s.fds`) that `src/protobuf.rs` decodes request bodies with.
//!
//! The .proto files ship inside the `k8s-rs-pb` crate (a build-dependency only so that cargo
//! downloads it; none of its code is used). `cargo metadata` tells us where its sources are.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes API version whose protos we compile.
const K8S_VERSION_DIR: &str = "src/v1_33";

fn main() {
    // Inputs are the build-dependency's pinned sources and this script; nothing else changes.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let proto_root = find_proto_root();
    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files);
    // Sorted so the descriptor set (and thus the build) is reproducible.
    files.sort();
    if files.is_empty() {
        panic!("no generated.proto files under {}", proto_root.display());
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts")).join("k8s.fds");
    let protoc = env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    let output = Command::new(&protoc)
        .arg("-I")
        .arg(&proto_root)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("running {:?} failed ({e}); install protobuf-compiler or set PROTOC", protoc));
    // protoc warns about unused imports in every upstream file; only show its output on failure.
    if !output.status.success() {
        panic!("protoc failed: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// `<k8s-rs-pb package dir>/src/v1_33`, found through `cargo metadata` (works for registry,
/// vendored and git sources alike).
fn find_proto_root() -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--offline"]);
    if let Ok(host) = env::var("HOST") {
        cmd.args(["--filter-platform", &host]);
    }
    cmd.arg("--manifest-path").arg(&manifest);
    let output = cmd.output().unwrap_or_else(|e| panic!("running cargo metadata failed: {e}"));
    if !output.status.success() {
        panic!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("cargo metadata has packages");
    for p in packages {
        if p["name"] == "k8s-rs-pb" {
            if let Some(m) = p["manifest_path"].as_str() {
                let dir = Path::new(m).parent().expect("manifest has a parent").join(K8S_VERSION_DIR);
                if dir.is_dir() {
                    return dir;
                }
            }
        }
    }
    panic!("k8s-rs-pb sources with {K8S_VERSION_DIR} not found via cargo metadata");
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.file_name().is_some_and(|n| n == "generated.proto") {
            // Absolute paths inside the -I root: protoc maps them to the same names imports use.
            out.push(path);
        }
    }
}
