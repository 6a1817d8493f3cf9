//! The `edge-kubelet` binary.
#![forbid(unsafe_code)]

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use edge_kubelet::cli::{Cli, Command, DrainArgs};
use edge_kubelet::control::{self, Availability};

/// SIGINT: stop at once, pods keep running (re-adopted on the next start). SIGTERM (the system
/// shutting down): for `run`, drain first, for at most `--shutdown-drain-timeout`, then stop; a
/// second signal stops at once.
async fn on_signals(
    availability: Option<(Availability, std::time::Duration)>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let drain = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => availability.filter(|(_, t)| !t.is_zero()),
    };
    if let Some((availability, timeout)) = drain {
        tracing::info!(
            ?timeout,
            "SIGTERM: draining before exit (a second signal exits at once)"
        );
        availability.shutting_down();
        tokio::select! {
            drained = availability.drained(timeout) => if drained {
                tracing::info!("drained: nothing runs here any more");
            } else {
                tracing::warn!(?timeout, "drain not finished in time; exiting anyway");
            },
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    tracing::info!("shutting down; pods keep running and are re-adopted on the next start");
    shutdown.cancel();
}

/// `edge-kubelet drain`: ask, then wait until nothing runs here (or the timeout).
async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let dir = args.agent.state_dir();
    let s = control::request(&dir, "drain").await?;
    println!("draining: {} pod(s) to move elsewhere", s.pods);
    if args.no_wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last = s.pods;
    loop {
        let s = control::request(&dir, "status").await?;
        if s.drained() {
            println!("drained: nothing runs here; `edge-kubelet resume` takes work again");
            return Ok(());
        }
        if s.pods != last {
            println!("draining: {} pod(s) left", s.pods);
            last = s.pods;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "not drained after {:?}: {} pod(s) still here (the drain goes on)",
                args.timeout,
                s.pods
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

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
    let availability = match &cli.command {
        Command::Run(args) => Some((
            Availability::new(Some(&args.state_dir())),
            args.shutdown_drain_timeout,
        )),
        _ => None,
    };
    tokio::spawn(on_signals(availability.clone(), shutdown.clone()));
    match cli.command {
        Command::Run(args) => {
            let (availability, _) = availability.expect("run has a handle");
            edge_kubelet::run_with(*args, shutdown, availability).await?
        }
        Command::Pause(args) => {
            let s = control::request(&args.state_dir(), "pause").await?;
            println!(
                "paused: no new work comes; {} pod(s) keep running here",
                s.pods
            );
        }
        Command::Resume(args) => {
            let s = control::request(&args.state_dir(), "resume").await?;
            if s.state == control::State::Available {
                println!("resumed: this machine takes work again");
            } else {
                println!(
                    "resumed by you, but still {:?} ({}){}",
                    s.state,
                    s.reason,
                    s.next_change
                        .map(|t| format!(" until {t}"))
                        .unwrap_or_default()
                );
            }
        }
        Command::Drain(args) => drain(&args).await?,
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
