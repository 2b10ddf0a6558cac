//! Who is calling: the identity in the verified client certificate, checked on every call.
//!
//! Enrollment is open; AgentControl needs an agent certificate of an agent that exists and
//! is not revoked; Admin needs an admin certificate. A call without a certificate to
//! anything but Enrollment fails with `Unauthenticated`; a valid certificate of the wrong
//! kind with `PermissionDenied`.

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

/// The calling agent: its certificate names an agent that exists and is not revoked.
pub fn agent<T>(req: &Request<T>, store: &dyn Store) -> Result<AgentRecord, Status> {
    let id = match caller(req)? {
        Identity::Agent(id) => id,
        Identity::Admin(_) => {
            return Err(Status::permission_denied(
                "admin certificates cannot call agent services",
            ));
        }
    };
    let record = store
        .get_agent(&id)?
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
