//! The real `leadger` CLI, built as this package's binary so the end-to-end
//! tests can start it as a separate process (`CARGO_BIN_EXE_leadger-under-test`).

fn main() -> std::process::ExitCode {
    leadger::main()
}
