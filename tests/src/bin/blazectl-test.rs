//! `blazectl`'s real entry point under a name the tests can find.
fn main() -> std::process::ExitCode {
    blazedb::cli::main()
}
