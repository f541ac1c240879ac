//! `kagi`: the command-line front of the kagi host library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
