use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMELT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Ctrl-C: delete the temporary files of unfinished outputs, then exit like SIGINT does.
    let _ = ctrlc::set_handler(|| {
        smelt::gguf::writer::remove_unfinished_outputs();
        std::process::exit(130);
    });
    let cli = smelt::cli::Cli::parse();
    match smelt::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
