//! Other real clients than kubectl against three replicas: the Python `kubernetes` package
//! (Debian's python3-kubernetes).

mod common;

use common::Cluster;

#[test]
fn python_client_lists_creates_patches_watches_and_deletes_through_a_follower() {
    let c = Cluster::up(3, &[]);
    c.wait_api();
    let leader = c.leader().expect("leader");
    let follower = ["n1", "n2", "n3"].into_iter().find(|n| *n != leader).expect("follower");
    let script = common::repo_root().join("tests/clients/python_client.py");
    let out = std::process::Command::new("/usr/bin/python3").arg(&script).arg(c.path().join(follower).join("kubeconfig")).output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("watched ADDED,MODIFIED,DELETED"), "{stdout}");
    assert!(stdout.lines().last() == Some("ok"), "{stdout}");
}
