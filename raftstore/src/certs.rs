//! Cluster TLS material: a CA and the certificates signed by it (`kuberaft certs`).
//!
//! One CA signs everything. The server certificate carries every replica address as a SAN and
//! both server and client usages, so a replica presents it on its client port and to its peers
//! (mutual TLS). `client.crt` is the administrator's (CN=admin, O=system:masters).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), CertError> {
    let io = |err| CertError::Io { path: path.to_path_buf(), err };
    std::fs::write(path, data).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|err| CertError::Io { path: path.to_path_buf(), err })
}

/// The CA in `dir` (ca.crt, ca.key), created if absent.
pub fn load_or_create_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    std::fs::create_dir_all(dir).map_err(|err| CertError::Io { path: dir.to_path_buf(), err })?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() && key.exists() {
        let kp = KeyPair::from_pem(&read(&key)?)?;
        return Ok(Issuer::from_ca_cert_pem(&read(&crt)?, kp)?);
    }
    let kp = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kuberaft-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = p.self_signed(&kp)?;
    write(&crt, &cert.pem(), false)?;
    write(&key, &kp.serialize_pem(), true)?;
    Ok(Issuer::new(p, kp))
}

/// Issues `<name>.crt`/`<name>.key` in `dir`, signed by the CA.
pub fn issue(
    dir: &Path,
    ca: &Issuer<'_, KeyPair>,
    name: &str,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(), CertError> {
    let kp = KeyPair::generate()?;
    let mut p = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = usages.to_vec();
    p.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = p.signed_by(&kp, ca)?;
    write(&dir.join(format!("{name}.crt")), &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &kp.serialize_pem(), true)?;
    Ok(())
}

/// Creates (or completes) the cluster's TLS material in `dir` for replicas at `hosts`.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<(), CertError> {
    let ca = load_or_create_ca(dir)?;
    // The in-cluster names of the API (the `kubernetes` Service) as well as the hosts given.
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for h in hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    issue(dir, &ca, "server", "kuberaft", &[], &sans, &[ServerAuth, ClientAuth])?;
    issue(dir, &ca, "client", "admin", &["system:masters"], &[], &[ClientAuth])?;
    // The scheduler and controller manager that run inside every replica, as Kubernetes
    // users (RBAC binds them to their bootstrap roles).
    issue(dir, &ca, "scheduler", "system:kube-scheduler", &[], &[], &[ClientAuth])?;
    issue(dir, &ca, "controller-manager", "system:kube-controller-manager", &[], &[], &[ClientAuth])?;
    // The ServiceAccount token signing key: made once, shared by every replica.
    let sa = dir.join("sa.key");
    if !sa.exists() {
        write(&sa, &KeyPair::generate()?.serialize_pem(), true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_once_and_certificates_signed_by_it() {
        let d = tempfile::tempdir().unwrap();
        generate(d.path(), &["127.0.0.11".into(), "node-a".into()]).unwrap();
        let ca1 = std::fs::read_to_string(d.path().join("ca.crt")).unwrap();
        generate(d.path(), &["127.0.0.12".into()]).unwrap();
        assert_eq!(ca1, std::fs::read_to_string(d.path().join("ca.crt")).unwrap(), "the CA is reused");
        for f in ["server.crt", "server.key", "client.crt", "client.key", "sa.key", "scheduler.crt", "controller-manager.key"] {
            assert!(d.path().join(f).exists(), "{f}");
        }
    }
}
