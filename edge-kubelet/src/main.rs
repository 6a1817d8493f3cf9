//! The `edge-kubelet` binary.
#![forbid(unsafe_code)]

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use edge_kubelet::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; pods keep running and are re-adopted on the next start");
        on_signal.cancel();
    });
    match cli.command {
        Command::Run(args) => edge_kubelet::run(*args, shutdown).await?,
        Command::Status(args) => {
            if args.json {
                let r = edge_kubelet::read_report(&args.state_dir())?;
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", edge_kubelet::status(&args.state_dir())?);
            }
        }
        Command::Uninstall(args) => print!("{}", edge_kubelet::uninstall(&args).await?),
        Command::ConsoleUrl(args) => println!("{}", edge_kubelet::console_url(&args.state_dir())?),
        Command::Join(args) => {
            edge_kubelet::join(&args).await?;
            println!(
                "edge-kubelet: joined as provider {}; credential stored in {}. Start it with:\n  \
                 edge-kubelet run --operator {} --name {} --state-dir {}",
                args.name,
                args.state_dir().display(),
                args.operator,
                args.name,
                args.state_dir().display()
            );
        }
    }
    Ok(())
}
