fn main() {
    std::process::exit(bgsched::cli::main());
}
