//! kuberaft: the one binary. It parses flags and calls the libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kuberaft", version, about = "A Kubernetes-compatible control plane on an embedded Raft store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one control-plane replica (the Raft store and its etcd v3 API).
    Server(raftstore::server::ServerOptions),
    /// Generate the cluster CA and certificates (reuses an existing CA in DIR).
    Certs {
        /// Directory for ca.crt/key, server.crt/key, client.crt/key.
        #[arg(long, default_value = "kuberaft-data/pki")]
        dir: PathBuf,
        /// Addresses and names the server certificate is valid for (comma-separated).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBERAFT_LOG").unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn,hyper=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let res = match cli.cmd {
        Cmd::Server(opts) => opts.resolve().and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(raftstore::server::run(cfg))
        }),
        Cmd::Certs { dir, hosts } => raftstore::certs::generate(&dir, &hosts).map_err(Into::into),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kuberaft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
