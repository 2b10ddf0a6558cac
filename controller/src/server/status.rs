//! The one mapping from domain errors to gRPC status codes.

use tonic::Status;

use crate::pki::PkiError;
use crate::pki::policy::CsrError;
use crate::store::StoreError;
use crate::tokens::TokenFormatError;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::Token(refusal) => Status::permission_denied(refusal.to_string()),
            StoreError::AgentExists(_) => Status::already_exists(e.to_string()),
            StoreError::UnknownAgent(_) => Status::not_found(e.to_string()),
            StoreError::GenerationConflict { .. } => Status::aborted(e.to_string()),
            StoreError::NotLeader => Status::unavailable(e.to_string()),
            StoreError::Pool(_) => {
                tracing::error!(error = %e, "store");
                Status::unavailable("controller database unreachable; see the controller log")
            }
            StoreError::Db(_)
            | StoreError::Postgres(_)
            | StoreError::InUse(_)
            | StoreError::Corrupt { .. }
            | StoreError::TooNew { .. }
            | StoreError::Interrupted(_)
            | StoreError::BlobRead { .. }
            | StoreError::Injected(_) => {
                tracing::error!(error = %e, "store");
                Status::internal("controller store failed; see the controller log")
            }
        }
    }
}

impl From<CsrError> for Status {
    fn from(e: CsrError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<TokenFormatError> for Status {
    fn from(e: TokenFormatError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

impl From<PkiError> for Status {
    fn from(e: PkiError) -> Status {
        tracing::error!(error = %e, "pki");
        Status::internal("signing failed; see the controller log")
    }
}
