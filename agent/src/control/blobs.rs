//! The image fetcher's [`BlobSource`]: `DownloadBlob` on the channel of the current session
//! (mTLS, the agent's certificate). A refusal of the controller (`NOT_FOUND`, a bad
//! request) is final; anything else is an interrupted transfer, resumed later.

use async_trait::async_trait;
use drover_proto::v1;
use drover_proto::v1::agent_control_client::AgentControlClient;
use futures::StreamExt;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use crate::images::{BlobSource, BlobStream, FetchError};

/// Blobs over the session's channel (`None` while disconnected).
pub struct SessionBlobs {
    pub channel: watch::Receiver<Option<Channel>>,
}

fn status_error(s: &tonic::Status) -> FetchError {
    match s.code() {
        Code::NotFound | Code::InvalidArgument | Code::OutOfRange | Code::PermissionDenied => {
            FetchError::Refused(format!("{} ({:?})", s.message(), s.code()))
        }
        _ => FetchError::Interrupted(format!("{} ({:?})", s.message(), s.code())),
    }
}

#[async_trait]
impl BlobSource for SessionBlobs {
    async fn open(
        &self,
        image_id: &str,
        digest: &str,
        offset: u64,
    ) -> Result<BlobStream, FetchError> {
        let channel = self
            .channel
            .borrow()
            .clone()
            .ok_or_else(|| FetchError::Interrupted("not connected to the controller".into()))?;
        let stream = AgentControlClient::new(channel)
            .max_decoding_message_size(drover_proto::MAX_MESSAGE_BYTES)
            .download_blob(v1::DownloadBlobRequest {
                digest: digest.to_string(),
                offset,
                image_id: image_id.to_string(),
            })
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        Ok(stream
            .map(|c| c.map(|c| c.data).map_err(|s| status_error(&s)))
            .boxed())
    }
}
