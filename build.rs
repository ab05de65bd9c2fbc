// No code generation of our own: this build script exists so that the
// protoc-bin-vendored build-dependency is fetched and unpacked before
// etcd-client's build script calls scripts/protoc (see .cargo/config.toml).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
