//! kuberaft: the one binary. It parses flags and calls the libraries.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_sched;
mod components;

// glibc malloc showed up at ~8% of CPU under write load (consolidation, arena locks).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kuberaft", version, about = "A Kubernetes-compatible control plane on an embedded Raft store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up a local control plane with embedded defaults (one replica under ./kuberaft-data).
    Up {
        /// Where data, certificates and etcd.env go.
        #[arg(long, default_value = "kuberaft-data")]
        dir: PathBuf,
    },
    /// Run one control-plane replica: the Raft store, its etcd v3 API and the Kubernetes API.
    Server {
        #[command(flatten)]
        store: raftstore::server::ServerOptions,
        #[command(flatten)]
        api: apiserver::ApiOptions,
        /// Do not run the scheduler and controller manager in this replica.
        #[arg(long)]
        no_controllers: bool,
        #[command(flatten)]
        election: components::ElectionArgs,
        #[command(flatten)]
        nodes: components::NodeControllerArgs,
    },
    /// Run a node daemon (for now only hollow nodes: registered, heartbeating, reporting their
    /// pods Running without running anything; for control-plane scale tests).
    Node(node::NodeArgs),
    /// Write a kubeconfig for a user, with a client certificate from the cluster CA.
    Kubeconfig {
        /// Directory of the cluster CA (ca.crt, ca.key).
        #[arg(long, default_value = "kuberaft-data/pki")]
        pki: PathBuf,
        /// API server URL.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// User name (the certificate's CN).
        #[arg(long, default_value = "admin", conflicts_with = "node")]
        user: String,
        /// A node daemon's kubeconfig instead: user system:node:NODE in group system:nodes.
        #[arg(long)]
        node: Option<String>,
        /// Groups (the certificate's O), comma-separated; admin defaults to system:masters.
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        /// Where to write it.
        #[arg(long, default_value = "kubeconfig")]
        out: PathBuf,
    },
    /// Benchmarks against a peer system, measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
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

#[derive(Subcommand)]
enum BenchCmd {
    /// Kubernetes API of three replicas: pod creates, GET/LIST with 10,000 pods, watch fan-out, RSS.
    Api {
        /// Seconds per create measurement.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent clients for the create phase (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "64,512")]
        clients: Vec<usize>,
        /// Pods stored for the GET/LIST phase.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Concurrent watchers for the fan-out phase.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Scratch directory (wiped first).
        #[arg(long, default_value = "/tmp/kuberaft-bench-api")]
        dir: PathBuf,
    },
    /// Scheduling throughput and latency of one replica with thousands of hollow nodes, and a
    /// 1,000-replica Deployment until available.
    Sched {
        /// Hollow node counts (comma-separated), a fresh cluster each.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        nodes: Vec<usize>,
        /// Pods per kind.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Pod kinds (comma-separated): plain, node-affinity, pod-anti-affinity, spread.
        #[arg(long, value_delimiter = ',', default_value = "plain,node-affinity,pod-anti-affinity,spread")]
        kinds: Vec<String>,
        /// Replicas of the Deployment timed until available (0 skips it).
        #[arg(long, default_value_t = 1000)]
        deployment: usize,
        /// Concurrent pod creates.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Scratch directory (wiped first).
        #[arg(long, default_value = "/tmp/kuberaft-bench-sched")]
        dir: PathBuf,
    },
    /// Three kuberaft replicas vs three etcd 3.4 members: put, linearizable get, watch.
    Store {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Client counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,64,1000")]
        clients: Vec<usize>,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Distinct keys written and read.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// The etcd binary to compare with.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        /// Measure kuberaft only.
        #[arg(long)]
        skip_etcd: bool,
        /// Seconds to wait after the compaction that precedes the read phases.
        #[arg(long, default_value_t = 15)]
        settle: u64,
        /// Scratch directory (wiped first).
        #[arg(long, default_value = "/tmp/kuberaft-bench")]
        dir: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBERAFT_LOG").unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn,hyper=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// mimalloc's `purge_delay` option (its position in mimalloc 2's `mi_option_t`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The runtime of a replica (store, API server, scheduler, controllers in one process).
/// More worker threads than cores: some polls run for a long time without yielding (a kube
/// client decoding a list of 20,000 pods takes a second or two), and with one worker per core
/// two of them stalled every other task, Lease renewals included, until leaders lost their
/// Leases over and over at 5,000 nodes. The kernel time-slices the extra threads instead.
fn replica_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread().worker_threads((cores * 4).max(8)).enable_all().build()
}

fn main() -> ExitCode {
    // Return freed pages to the OS at once: with the default 10 ms delay, pages freed by threads
    // that then go idle stay resident (about 140 MiB of a replica's RSS after 10,000 pod
    // creates, measured; see BENCHMARKS.md).
    // MIMALLOC_PURGE_DELAY in the environment (milliseconds) overrides this.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    let cli = Cli::parse();
    init_tracing();
    let res = match cli.cmd {
        Cmd::Server { store, api, no_controllers, election, nodes } => store.resolve().and_then(|cfg| {
            let api = api.resolve(cfg.cacert.clone(), cfg.cert.clone(), cfg.key.clone())?;
            let name = cfg.replica.name.clone();
            replica_runtime()?.block_on(async move {
                let with_components = api.enabled && !no_controllers;
                apiserver::run_with(cfg, api, move |api| {
                    if with_components {
                        components::spawn(&name, api, &election, &nodes);
                    }
                })
                .await
            })
        }),
        Cmd::Up { dir } => apiserver::prepare_up(dir).and_then(|(cfg, api)| {
            let name = cfg.replica.name.clone();
            replica_runtime()?.block_on(async move {
                apiserver::run_with(cfg, api, move |api| components::spawn(&name, api, &components::ElectionArgs::default(), &components::NodeControllerArgs::default())).await
            })
        }),
        Cmd::Node(args) => tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Into::into).and_then(|rt| rt.block_on(node::run(args))),
        Cmd::Kubeconfig { pki, server, user, node, groups, out } => {
            let (user, groups) = match node {
                Some(n) => (format!("system:node:{n}"), groups.unwrap_or_else(|| vec!["system:nodes".into()])),
                None => {
                    let g = groups.unwrap_or_else(|| if user == "admin" { vec!["system:masters".into()] } else { vec![] });
                    (user, g)
                }
            };
            let gs: Vec<&str> = groups.iter().map(String::as_str).collect();
            apiserver::kubeconfig::write(&pki, &server, &user, &gs, &out)
        }
        Cmd::Bench { what: BenchCmd::Store { duration, clients, value_size, keys, etcd, skip_etcd, settle, dir } } => (|| {
            let opts = raftstore::bench::BenchOptions {
                duration: std::time::Duration::from_secs(duration),
                clients,
                value_size,
                keys,
                etcd_bin: etcd,
                kuberaft_bin: std::env::current_exe()?,
                work_dir: dir,
                skip_etcd,
                settle: std::time::Duration::from_secs(settle),
            };
            let table = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(raftstore::bench::run(opts))?;
            println!("{table}");
            Ok(())
        })(),
        Cmd::Bench { what: BenchCmd::Api { duration, clients, pods, watchers, dir } } => (|| {
            let o = apiserver::bench::BenchOptions {
                kuberaft_bin: std::env::current_exe()?,
                work_dir: dir,
                duration: std::time::Duration::from_secs(duration),
                clients,
                pods,
                watchers,
            };
            let table = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(apiserver::bench::run(o))?;
            println!("{table}");
            Ok(())
        })(),
        Cmd::Bench { what: BenchCmd::Sched { nodes, pods, kinds, deployment, clients, dir } } => (|| {
            let o = bench_sched::BenchOptions { kuberaft_bin: std::env::current_exe()?, work_dir: dir, nodes, pods, kinds, deployment_replicas: deployment, clients };
            let table = tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(bench_sched::run(o))?;
            println!("{table}");
            Ok(())
        })(),
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
