//! The agent's real entry point under a name the tests can find.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    blazed::cli::main()
}
