fn main() -> std::process::ExitCode {
    blazed::cli::main()
}
