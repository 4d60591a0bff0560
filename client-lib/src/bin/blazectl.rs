fn main() -> std::process::ExitCode {
    blazedb::cli::main()
}
