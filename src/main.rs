use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = smelt::cli::Cli::parse_args();
    if let Some(n) = cli.threads {
        // candle (the forward pass) sizes its matmul thread pool from rayon's variable; set
        // here, while this is the only thread, so `--threads` bounds every pool.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    // RUST_LOG wins; else -q: errors only, default: warnings, -v: info, -vv: debug. SMELT_LOG
    // is still read, for scripts written before RUST_LOG was.
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("SMELT_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    // Every terminating signal and every panic deletes the temporary files of unfinished
    // outputs.
    if let Err(e) = smelt::output_files::install_cleanup_handlers() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match smelt::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", smelt::error::printable(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
