//! Who is calling: the identity in the verified client certificate, checked on every call.
//!
//! Enrollment is open; AgentControl needs an agent certificate of an agent that exists and
//! is not revoked; Admin needs an admin certificate. A call without a certificate to
//! anything but Enrollment fails with `Unauthenticated`; a valid certificate of the wrong
//! kind with `PermissionDenied`.

use std::sync::Arc;

use tonic::{Request, Status};

use super::tls::PeerInfo;
use crate::pki::identity::{self, Identity};
use crate::store::{AgentRecord, Store};

/// The identity of the caller, from its certificate.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.certs.clone())
        .ok_or_else(|| {
            Status::unauthenticated("a client certificate is required for this call; enroll first")
        })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    identity::from_cert_der(leaf).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The calling agent's id, from its certificate (an admin certificate is refused). Then
/// [`enrolled_agent`] checks it against the store.
pub fn agent_id<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Identity::Agent(id) => Ok(id),
        Identity::Admin(_) => Err(Status::permission_denied(
            "admin certificates cannot call agent services",
        )),
    }
}

/// The agent `id` (from [`agent_id`]): it exists and is not revoked.
pub async fn enrolled_agent(store: &Arc<dyn Store>, id: String) -> Result<AgentRecord, Status> {
    let lookup = id.clone();
    let record = crate::store::blocking(store, move |s| s.get_agent(&lookup))
        .await?
        .ok_or_else(|| Status::unauthenticated(format!("agent {id} is not enrolled")))?;
    if record.revoked_at.is_some() {
        return Err(Status::unauthenticated(format!(
            "agent {id} was revoked; enroll again with a new token"
        )));
    }
    Ok(record)
}

/// The calling admin's name.
pub fn admin<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Identity::Admin(name) => Ok(name),
        Identity::Agent(id) => Err(Status::permission_denied(format!(
            "agent {id} may not call admin services"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use time::OffsetDateTime;
    use tonic::Code;

    use super::*;
    use crate::pki::ca::Ca;
    use crate::pki::policy;
    use crate::store::memory::MemoryStore;

    fn request(certs: Option<Vec<rustls_pki_types::CertificateDer<'static>>>) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            certs: certs.map(Arc::new),
        });
        r
    }

    #[test]
    fn no_certificate_is_unauthenticated() {
        assert_eq!(
            caller(&Request::new(())).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            admin(&request(None)).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            agent_id(&request(None)).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn wrong_kind_is_permission_denied_and_unknown_agent_unauthenticated() {
        let ca = Ca::generate().unwrap();
        let now = OffsetDateTime::now_utc();
        let admin_cert = policy::issue_admin(&ca, "local", now).unwrap().cert.der;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        assert_eq!(
            admin(&request(Some(vec![admin_cert.clone()]))).unwrap(),
            "local"
        );
        let err = agent_id(&request(Some(vec![admin_cert]))).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let csr = policy::verify_csr(csr.der()).unwrap();
        let agent_cert = policy::sign_client(
            &ca,
            &csr,
            &Identity::Agent("a1".into()),
            now,
            policy::DEFAULT_AGENT_CERT_TTL,
        )
        .unwrap()
        .der;
        let err = admin(&request(Some(vec![agent_cert.clone()]))).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let id = agent_id(&request(Some(vec![agent_cert]))).unwrap();
        assert_eq!(id, "a1");
        let err = enrolled_agent(&store, id).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "not enrolled");
    }
}
