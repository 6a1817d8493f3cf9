//! `decloud-operator`: parses the command line, sets up logging and runs the command.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    decloud_operator::main(decloud_operator::Cli::parse()).await?;
    Ok(())
}
