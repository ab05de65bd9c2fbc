// No code generation of our own: this build script exists so that the
// protoc-bin-vendored build-dependency is fetched and unpacked before
// etcd-client's build script calls scripts/protoc (see .cargo/config.toml).
//
// It also links the bgsched binary as a fixed-position executable: every
// run re-executes it as the run's supervisor, and a position-independent
// binary first has to patch some 40,000 pointers (and copy the pages that
// hold them) on each start.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux") && target.contains("gnu") {
        println!("cargo:rustc-link-arg-bin=bgsched=-no-pie");
    }
}
