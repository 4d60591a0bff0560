// Writes allocate on client tasks and free on the writer thread; mimalloc
// handles that pattern far better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    blazed::cli::main()
}
