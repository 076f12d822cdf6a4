//! A seeded randomized fault test on real processes: clients increment counters with
//! compare-and-swap transactions through every replica while a nemesis kills, stops and restarts
//! replicas (sometimes all of them). At the end every counter must equal the number of
//! acknowledged increments, plus at most the number whose outcome was ambiguous (timeouts):
//! no acknowledged increment lost, none applied twice. Set NEMESIS_SEED to replay a run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};


#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    acked: u64,
    ambiguous: u64,
}

const KEYS: usize = 4;
const CLIENTS: usize = 6;

enum Outcome {
    Acked,
    /// Lost the race: nothing was written.
    NotApplied,
    /// Could not read: nothing was sent.
    Unavailable,
    /// The transaction was sent and no answer came back.
    Unknown,
}

async fn increment(cli: &mut etcd_client::Client, key: &str) -> Outcome {
    let Ok(Ok(get)) = tokio::time::timeout(Duration::from_secs(3), cli.get(key, None)).await else {
        return Outcome::Unavailable;
    };
    let (value, modrev) = match get.kvs().first() {
        Some(kv) => (kv.value_str().unwrap_or("0").parse::<u64>().unwrap_or(0), kv.mod_revision()),
        None => (0, 0),
    };
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(key, CompareOp::Equal, modrev)])
        .and_then(vec![TxnOp::put(key, (value + 1).to_string(), None)]);
    match tokio::time::timeout(Duration::from_secs(3), cli.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => Outcome::Acked,
        Ok(Ok(_)) => Outcome::NotApplied,
        _ => Outcome::Unknown,
    }
}

#[test]
fn cas_counters_survive_random_kills_and_restarts_without_lost_or_doubled_updates() {
    let seed: u64 = std::env::var("NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("NEMESIS_SEED={seed}");
    let c = Cluster::up(3, common::STORE_ONLY);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pki = c.path().join("pki");
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        // Each client talks to one replica, so every replica forwards and serves reads.
        let ep = vec![c.client_url(&format!("n{}", w % 3 + 1))];
        let all = c.endpoints();
        let pki = pki.clone();
        let stop = stop.clone();
        workers.push(rt.spawn(async move {
            let mut tallies = [Tally::default(); KEYS];
            let mut cli = common::client_for(&pki, &ep).await;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let k = i % KEYS;
                i += 1;
                let outcome = increment(&mut cli, &format!("ctr/{k}")).await;
                match outcome {
                    Outcome::Acked => tallies[k].acked += 1,
                    Outcome::NotApplied => {}
                    Outcome::Unavailable | Outcome::Unknown => {
                        if matches!(outcome, Outcome::Unknown) {
                            tallies[k].ambiguous += 1;
                        }
                        // Its replica may be down: carry on through any replica.
                        cli = common::client_for(&pki, &all).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            tallies
        }));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let t = Instant::now();
    let mut down: Option<String> = None;
    while t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(700 + rng.random_range(0..800)));
        if let Some(n) = down.take() {
            c.script_ok(&["start", &n]);
            continue;
        }
        let n = format!("n{}", rng.random_range(0..3) + 1);
        match rng.random_range(0..6) {
            0 | 1 => {
                c.script_ok(&["kill", &n]);
                down = Some(n);
            }
            2 => {
                c.script_ok(&["stop", &n]);
                down = Some(n);
            }
            3 => {
                if let Some(l) = c.leader() {
                    c.script_ok(&["kill", &l]);
                    down = Some(l);
                }
            }
            4 => {
                // Everyone at once, then back.
                for k in 1..=3 {
                    let _ = c.script(&["kill", &format!("n{k}")]);
                }
                c.script_ok(&["up", "--replicas", "3"]);
            }
            _ => {}
        }
    }
    if let Some(n) = down.take() {
        c.script_ok(&["start", &n]);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = [Tally::default(); KEYS];
    for w in workers {
        let tallies = rt.block_on(w).unwrap();
        for k in 0..KEYS {
            total[k].acked += tallies[k].acked;
            total[k].ambiguous += tallies[k].ambiguous;
        }
    }
    c.wait_leader(Duration::from_secs(20)).expect("a leader after the faults");
    rt.block_on(async {
        let mut cli = c.client(&c.endpoints()).await;
        for (k, tally) in total.iter().enumerate() {
            let r = cli.get(format!("ctr/{k}"), None).await.expect("final read");
            let v: u64 = r.kvs().first().map(|kv| kv.value_str().unwrap().parse().unwrap()).unwrap_or(0);
            eprintln!("ctr/{k}: value {v}, acknowledged {}, ambiguous {}", tally.acked, tally.ambiguous);
            assert!(v >= tally.acked, "seed {seed}: ctr/{k} lost acknowledged increments: {v} < {}", tally.acked);
            assert!(v <= tally.acked + tally.ambiguous, "seed {seed}: ctr/{k} has increments nobody made: {v} > {} + {}", tally.acked, tally.ambiguous);
        }
        assert!(total.iter().map(|t| t.acked).sum::<u64>() > 20, "the clients made progress through the faults");
    });
}
