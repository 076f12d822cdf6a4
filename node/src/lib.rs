//! The kuberaft node daemon. For now only hollow nodes: Nodes that register, heartbeat and
//! report the pods bound to them as running (Job pods as completed) without running
//! anything, all through the Kubernetes API, so that the scheduler and controllers can be
//! exercised at scale. Many hollow nodes share one process.

mod args;
mod hollow;
mod ipam;
mod objects;

use anyhow::{bail, Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::info;

pub use args::NodeArgs;

/// `kuberaft node`: runs until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> Result<()> {
    require_hollow(&args)?;
    let kc = Kubeconfig::read_from(&args.kubeconfig).with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.with_context(|| format!("loading kubeconfig {}", args.kubeconfig.display()))?;
    tokio::select! {
        r = run_hollow(config, args) => r,
        r = shutdown_signal() => {
            r?;
            info!("shutting down");
            Ok(())
        }
    }
}

/// Runs the hollow nodes `args` describe with a ready-made client configuration (its
/// `--kubeconfig` is not read); runs until dropped or an unrecoverable error.
pub async fn run_hollow(config: kube::Config, args: NodeArgs) -> Result<()> {
    require_hollow(&args)?;
    let shape = args::Shape::from_args(&args, args::hostname)?;
    let client = kube::Client::try_from(config).context("creating the API client")?;
    hollow::run(client, shape).await
}

fn require_hollow(args: &NodeArgs) -> Result<()> {
    if !args.hollow {
        bail!("kuberaft node: only --hollow is supported for now (the real node daemon is not built yet)");
    }
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
