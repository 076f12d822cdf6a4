//! kubeconfig files (`kuberaft kubeconfig`): a cluster entry with the CA, and a user entry with
//! a client certificate issued by the cluster CA (CN = user, O = groups).

use std::path::Path;

use base64::Engine;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The kubeconfig text for `user` at `server` with PEM material.
pub fn render(cluster: &str, server: &str, ca_pem: &[u8], user: &str, cert_pem: &[u8], key_pem: &[u8], namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {user}@{cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\n    namespace: {namespace}\ncurrent-context: {user}@{cluster}\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// Issues a client certificate for `user` (groups as O) with the CA in `pki`, and writes a
/// kubeconfig for it to `out`.
pub fn write(pki: &Path, server: &str, user: &str, groups: &[&str], out: &Path) -> anyhow::Result<()> {
    let ca = raftstore::certs::load_or_create_ca(pki)?;
    let dir = tempfile_dir(out)?;
    let file = format!("kubeconfig-{}", user.replace([':', '/'], "-"));
    raftstore::certs::issue(&dir, &ca, &file, user, groups, &[], &[rcgen::ExtendedKeyUsagePurpose::ClientAuth])?;
    let read = |p: std::path::PathBuf| std::fs::read(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let text = render("kuberaft", server, &read(pki.join("ca.crt"))?, user, &read(dir.join(format!("{file}.crt")))?, &read(dir.join(format!("{file}.key")))?, "default");
    let _ = std::fs::remove_file(dir.join(format!("{file}.crt")));
    let _ = std::fs::remove_file(dir.join(format!("{file}.key")));
    std::fs::write(out, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The kubeconfig's directory (certificates are issued there, then inlined and removed).
fn tempfile_dir(out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
