//! A real cluster of `kuberaft server` processes for end-to-end tests, driven through
//! deploy/cluster (so the script is tested too). Each cluster gets its own loopback subnet so
//! tests can run in parallel, and is torn down on drop, also when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: tempfile_dir::Dir,
    pub ip_base: String,
    pub replicas: usize,
}

/// A small temp dir helper (no extra dependency): removed on drop unless KEEP_TEST_DIRS is set.
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};
    pub struct Dir(pub PathBuf);
    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>()));
            std::fs::create_dir_all(&p).expect("create temp dir");
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            if std::env::var_os("KEEP_TEST_DIRS").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kuberaft_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kuberaft"))
}

fn unique_ip_base() -> String {
    // 127.X.Y.0/24 with X in 20..250: one subnet per cluster, all on the loopback interface.
    format!("127.{}.{}", 20 + rand::random::<u8>() % 230, rand::random::<u8>() % 250)
}

impl Cluster {
    /// Starts `replicas` replicas and waits for a leader.
    pub fn up(replicas: usize, extra: &[&str]) -> Cluster {
        Self::up_with(replicas, 10_000, extra)
    }

    pub fn up_with(replicas: usize, snapshot_count: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile_dir::Dir::new("kuberaft-test");
        let ip_base = unique_ip_base();
        let c = Cluster { dir, ip_base, replicas };
        let mut args = vec![
            "up".to_string(),
            "--replicas".into(),
            replicas.to_string(),
            "--ip-base".into(),
            c.ip_base.clone(),
            "--snapshot-count".into(),
            snapshot_count.to_string(),
        ];
        if !extra.is_empty() {
            args.push("--".into());
            args.extend(extra.iter().map(|s| s.to_string()));
        }
        let out = c.script(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "cluster up failed: {}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs deploy/cluster with `--dir` for this cluster.
    pub fn script(&self, args: &[&str]) -> Output {
        // --dir goes before `--`: what follows that is for the servers.
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        Command::new(repo_root().join("deploy/cluster"))
            .args(&args[..split])
            .arg("--dir")
            .arg(self.path())
            .args(&args[split..])
            .env("KUBERAFT_BIN", kuberaft_bin())
            .output()
            .expect("run deploy/cluster")
    }

    pub fn script_ok(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(out.status.success(), "deploy/cluster {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, name: &str) -> String {
        let k: u32 = name.trim_start_matches('n').parse().expect("replica name nK");
        format!("{}.{}", self.ip_base, 10 + k)
    }

    pub fn client_url(&self, name: &str) -> String {
        format!("https://{}:2379", self.ip(name))
    }

    pub fn endpoints(&self) -> Vec<String> {
        (1..=self.replicas).map(|k| self.client_url(&format!("n{k}"))).collect()
    }

    /// The replica whose status line says `leader`, if any.
    pub fn leader(&self) -> Option<String> {
        let out = self.script(&["status"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == "leader"))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
    }

    pub fn wait_leader(&self, timeout: Duration) -> Option<(String, Duration)> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(l) = self.leader() {
                return Some((l, t.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until replica `name`'s process has exited; false if it still runs after `timeout`.
    pub fn wait_exited(&self, name: &str, timeout: Duration) -> bool {
        let pid = std::fs::read_to_string(self.path().join(name).join("pid")).unwrap_or_default().trim().to_string();
        let t = Instant::now();
        while Command::new("kill").args(["-0", &pid]).status().map(|s| s.success()).unwrap_or(false) {
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// The last line replica `name` logged.
    pub fn last_log_line(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.path().join(name).join("server.log")).unwrap_or_default();
        log.lines().last().unwrap_or_default().to_string()
    }

    /// /status JSON of one replica.
    pub fn status(&self, name: &str) -> Option<serde_json::Value> {
        let out = Command::new("curl").args(["-s", "--max-time", "1", &format!("http://{}:2381/status", self.ip(name))]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoints().join(","), args)
    }

    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        let pki = self.path().join("pki");
        Command::new("etcdctl")
            .env_remove("ETCDCTL_ENDPOINTS")
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_CACERT", pki.join("ca.crt"))
            .env("ETCDCTL_CERT", pki.join("client.crt"))
            .env("ETCDCTL_KEY", pki.join("client.key"))
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .expect("etcdctl is installed (apt install etcd-client)")
    }

    /// etcdctl that must succeed; returns stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A Rust etcd client (the etcd-client crate) over mutual TLS to the given endpoints.
    pub async fn client(&self, endpoints: &[String]) -> etcd_client::Client {
        client_for(&self.path().join("pki"), endpoints).await
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for k in 1..=self.replicas + 2 {
            let p = self.path().join(format!("n{k}/server.log"));
            if let Ok(t) = std::fs::read_to_string(&p) {
                let tail: Vec<&str> = t.lines().rev().take(30).collect();
                s += &format!("--- n{k} (last lines)\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        s
    }
}

/// An etcd-client connection with the admin certificate from a cluster's pki dir.
pub async fn client_for(pki: &Path, endpoints: &[String]) -> etcd_client::Client {
    let read = |f: &str| std::fs::read(pki.join(f)).expect("pki file");
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
        .identity(etcd_client::Identity::from_pem(read("client.crt"), read("client.key")));
    let opts = etcd_client::ConnectOptions::new().with_tls(tls).with_timeout(Duration::from_secs(10)).with_connect_timeout(Duration::from_secs(2));
    etcd_client::Client::connect(endpoints, Some(opts)).await.expect("connect etcd client")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// kubectl against a replica of the cluster, with the admin kubeconfig deploy/cluster wrote
/// and a cache directory of the cluster's own (kubectl caches discovery for 6 h).
impl Cluster {
    pub fn kubectl_cmd(&self, replica: &str, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(self.path().join(replica).join("kubeconfig"));
        c.arg("--cache-dir").arg(self.path().join("kcache").join(replica));
        c.args(args);
        c
    }

    /// kubectl on n1.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_at("n1", args)
    }

    pub fn kubectl_at(&self, replica: &str, args: &[&str]) -> Output {
        self.kubectl_cmd(replica, args).output().expect("run kubectl")
    }

    /// kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self.kubectl_cmd("n1", args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run kubectl");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl on n1, asserts success, returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl on n1, asserts failure, returns stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes `text` to a file in the cluster dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }

    /// Waits until the bootstrap objects exist (the replicas create namespaces, the RBAC
    /// policy and, last, the `kubernetes` Service).
    pub fn wait_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.kubectl(&["get", "service", "kubernetes", "-n", "default", "-o", "name"]);
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "API not ready: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Server flags for tests of the store alone: they count keys and revisions, which the
/// Kubernetes API's bootstrap objects would add to.
pub const STORE_ONLY: &[&str] = &["--no-kubernetes-api"];

/// Kills a child process on drop.
pub struct KillOnDrop(pub std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Cluster {
    /// A stand-in node daemon (tests/clients/fake_node.py: logs and exec at kubelet's paths,
    /// client certificates required) on the address of replica slot `slot` (one the cluster's
    /// server certificate covers), registered as Node `node`.
    pub fn fake_node(&self, slot: &str, node: &str) -> KillOnDrop {
        use std::io::BufRead;
        let ip = self.ip(slot);
        let pki = self.path().join("pki");
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo_root().join("tests/clients/fake_node.py"))
            .args([ip.as_str(), "10250"])
            .arg(pki.join("server.crt"))
            .arg(pki.join("server.key"))
            .arg(pki.join("ca.crt"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("fake node");
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready).expect("ready line");
        assert_eq!(ready.trim(), "ready");
        let guard = KillOnDrop(child);
        let yaml = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{ip}\"}}\n  daemonEndpoints:\n    kubeletEndpoint: {{Port: 10250}}\n");
        self.kubectl_ok(&["apply", "-f", &self.file(&format!("{node}.yaml"), &yaml)]);
        guard
    }
}

/// Server flags for tests that run their own scheduler or controller manager in the test
/// process (the replicas' own would compete for the same Leases).
pub const NO_CONTROLLERS: &[&str] = &["--no-controllers"];

/// Polls `f` until it returns Ok, or panics with the last error seen.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Hollow nodes (`node::run_hollow`) in a runtime of their own, talking to replica n1; they
/// stop when dropped.
pub struct Hollow {
    _rt: tokio::runtime::Runtime,
}

impl Hollow {
    pub fn start(c: &Cluster, flags: &[&str]) -> Hollow {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let kubeconfig = c.path().join("n1").join("kubeconfig");
        let config = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("config")
        });
        let mut all = vec!["--hollow", "--kubeconfig", kubeconfig.to_str().expect("utf-8 path")];
        all.extend_from_slice(flags);
        let args = node::NodeArgs::from_flags(all).expect("flags");
        rt.spawn(node::run_hollow(config, args));
        Hollow { _rt: rt }
    }
}
