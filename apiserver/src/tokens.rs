//! ServiceAccount tokens: JWTs signed with the cluster's service-account key (ES256), issued by
//! TokenRequest (`kubectl create token`, pods' projected tokens) and accepted as bearer tokens.
//! A token is valid while it has not expired and its ServiceAccount still exists with the same
//! uid, so deleting the account revokes its tokens.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::request::{decode_body, Reply, Request, User};
use crate::rest::{now_unix, Target};
use crate::store::{object_key, Freshness};
use crate::Api;

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const DEFAULT_TTL: i64 = 3600;
const MIN_TTL: i64 = 600;

pub struct Signer {
    key: EcdsaKeyPair,
    public: Vec<u8>,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl Signer {
    /// Loads the PKCS#8 PEM key at `path`, creating it on first use.
    pub fn load_or_create(path: &std::path::Path) -> anyhow::Result<Signer> {
        if !path.exists() {
            let kp = rcgen::KeyPair::generate().map_err(|e| anyhow::anyhow!("service-account key: {e}"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, kp.serialize_pem())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let der = match rustls_pemfile::private_key(&mut &pem[..])? {
            Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
            _ => anyhow::bail!("{}: expected a PKCS#8 ECDSA P-256 private key", path.display()),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new()).map_err(|e| anyhow::anyhow!("{}: not an ECDSA P-256 key: {e}", path.display()))?;
        let public = key.public_key().as_ref().to_vec();
        Ok(Signer { key, public })
    }

    pub fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = b64(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = b64(claims.to_string().as_bytes());
        let msg = format!("{header}.{payload}");
        let sig = self.key.sign(&SystemRandom::new(), msg.as_bytes()).map_err(|_| ApiError::Internal("token signing failed".into()))?;
        Ok(format!("{msg}.{}", b64(sig.as_ref())))
    }

    /// The claims of a token we signed, if its signature is right and it has not expired.
    pub fn verify(&self, token: &str, now: i64) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public).verify(format!("{h}.{p}").as_bytes(), &sig).ok()?;
        let claims: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
        if claims["iss"] != ISSUER || claims["exp"].as_i64().map(|e| e <= now).unwrap_or(true) {
            return None;
        }
        Some(claims)
    }
}

impl Api {
    /// The user a ServiceAccount token stands for, if it is valid and its account still exists.
    pub async fn authenticate_token(&self, token: &str) -> Option<User> {
        self.authenticate_token_for(token, &[ISSUER.to_string()]).await.map(|(u, _)| u)
    }

    /// The user a token stands for if it is meant for one of `audiences` (the API's own is the
    /// issuer URL), with the audiences it matched. A token bound to a pod dies with the pod.
    pub async fn authenticate_token_for(&self, token: &str, audiences: &[String]) -> Option<(User, Vec<String>)> {
        let claims = self.signer.as_ref()?.verify(token, now_unix())?;
        let aud: Vec<String> = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => vec![],
        };
        let matched: Vec<String> = aud.into_iter().filter(|a| audiences.contains(a)).collect();
        if matched.is_empty() {
            return None;
        }
        let k = &claims["kubernetes.io"];
        let ns = k["namespace"].as_str()?;
        let name = k["serviceaccount"]["name"].as_str()?;
        let uid = k["serviceaccount"]["uid"].as_str()?;
        let cat = self.catalog.get();
        let sa_res = cat.lookup("", "v1", "serviceaccounts")?;
        let (sa, _) = self.store.get(&object_key(&sa_res, Some(ns), name), Freshness::Any).await.ok()??;
        if sa["metadata"]["uid"].as_str() != Some(uid) {
            return None;
        }
        if let Some(pod) = k["pod"]["name"].as_str() {
            let pods = cat.lookup("", "v1", "pods")?;
            let (p, _) = self.store.get(&object_key(&pods, Some(ns), pod), Freshness::Any).await.ok()??;
            if p["metadata"]["uid"] != k["pod"]["uid"] || p["metadata"].get("deletionTimestamp").is_some() {
                return None;
            }
        }
        let user = User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()],
        };
        Some((user, matched))
    }

    /// POST serviceaccounts/NAME/token (TokenRequest).
    pub async fn token_request(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let body = decode_body(req)?;
        if !body.is_object() || !(body["spec"].is_null() || body["spec"].is_object()) {
            return Err(ApiError::BadRequest("the body of the request is not a TokenRequest object".into()));
        }
        let signer = self.signer.as_ref().ok_or_else(|| ApiError::Unavailable("no service-account signing key is configured".into()))?;
        let sa_t = Target { sub: None, ..t.clone() };
        let (sa, _) = self.store.get(&sa_t.key(), Freshness::Latest).await?.ok_or_else(|| ApiError::NotFound { gr: t.res.gr(), name: t.name.clone().unwrap_or_default() })?;
        let ttl = body["spec"]["expirationSeconds"].as_i64().unwrap_or(DEFAULT_TTL);
        if ttl < MIN_TTL {
            return Err(ApiError::invalid("TokenRequest", "authentication.k8s.io", t.name.as_deref().unwrap_or(""), vec![Cause::invalid("spec.expirationSeconds", ttl, "may not specify a duration less than 10 minutes")]));
        }
        let ttl = ttl.min(86400 * 365);
        let now = now_unix();
        let audiences = match body["spec"]["audiences"].as_array() {
            Some(a) if !a.is_empty() => Value::Array(a.clone()),
            _ => json!([ISSUER]),
        };
        let ns = sa["metadata"]["namespace"].clone();
        let mut k = json!({"namespace": ns, "serviceaccount": {"name": sa["metadata"]["name"], "uid": sa["metadata"]["uid"]}});
        let bound = &body["spec"]["boundObjectRef"];
        if bound["kind"] == "Pod" {
            k["pod"] = json!({"name": bound["name"], "uid": bound["uid"]});
        }
        let claims = json!({
            "iss": ISSUER, "aud": audiences, "iat": now, "nbf": now, "exp": now + ttl,
            "sub": format!("system:serviceaccount:{}:{}", ns.as_str().unwrap_or(""), sa["metadata"]["name"].as_str().unwrap_or("")),
            "kubernetes.io": k,
        });
        let token = signer.sign(&claims)?;
        let exp = jiff::Timestamp::from_second(now + ttl).map(|t| t.to_string()).unwrap_or_default();
        let mut out = body.clone();
        if !out["spec"].is_object() {
            out["spec"] = json!({});
        }
        out["kind"] = json!("TokenRequest");
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["metadata"] = json!({"name": sa["metadata"]["name"], "namespace": ns, "creationTimestamp": null});
        out["spec"]["audiences"] = audiences;
        out["spec"]["expirationSeconds"] = json!(ttl);
        out["status"] = json!({"token": token, "expirationTimestamp": exp});
        Ok(Reply::code(201, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_tampering_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Signer::load_or_create(&dir.path().join("sa.key")).expect("signer");
        let claims = json!({"iss": ISSUER, "exp": 2000, "kubernetes.io": {"namespace": "default"}});
        let t = s.sign(&claims).expect("sign");
        assert!(s.verify(&t, 1000).is_some());
        assert!(s.verify(&t, 2000).is_none(), "expired");
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64(br#"{"iss":"https://kubernetes.default.svc.cluster.local","exp":99999999999}"#);
        parts[1] = &forged;
        assert!(s.verify(&parts.join("."), 1000).is_none(), "payload changed");
        // The same key file gives the same verifier (every replica shares it).
        let s2 = Signer::load_or_create(&dir.path().join("sa.key")).expect("signer");
        assert!(s2.verify(&t, 1000).is_some());
        assert!(s.verify("not.a.jwt", 1000).is_none());
        assert!(s.verify("", 1000).is_none());
    }
}
