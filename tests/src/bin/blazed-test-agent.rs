//! The agent's real entry point under a name the tests can find.
fn main() -> std::process::ExitCode {
    blazed::cli::main()
}
