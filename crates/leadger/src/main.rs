fn main() -> std::process::ExitCode {
    leadger::main()
}
