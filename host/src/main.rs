//! The `duro` binary: parse the command line, set up logging, run.

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DURO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = duro::cli::Cli::parse();
    if let Err(e) = duro::cli::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
