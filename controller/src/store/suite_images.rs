//! The shared store suite's cases for image blobs, images and deliveries (run by
//! `suite::run_all`).

use time::OffsetDateTime;

use super::{BLOB_CHUNK_BYTES, DeliveryRecord, ImageRecord, Store, StoreError};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
}

pub(super) fn image() -> ImageRecord {
    ImageRecord {
        id: "sha256:aa".into(),
        reference: "app:1".into(),
        manifest_json: "{\"layers\":[]}".into(),
        created_at: now(),
    }
}

pub(super) fn delivery(agent: &str) -> DeliveryRecord {
    DeliveryRecord {
        agent_id: agent.into(),
        image_id: "sha256:aa".into(),
        reference: "app:1".into(),
        state: "pending".into(),
        rate_limit: 10,
        updated_at: Some(now()),
        ..DeliveryRecord::default()
    }
}

/// A blob of two and a half chunks reads back chunk by chunk; storing it again is a no-op.
pub(super) fn blobs_are_chunked_and_stored_once(s: Box<dyn Store>) {
    let blob: Vec<u8> = (0..BLOB_CHUNK_BYTES * 5 / 2)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_eq!(s.blob_size("sha256:b1").unwrap(), None);
    assert!(
        s.put_blob("sha256:b1", blob.len() as u64, &mut &blob[..])
            .unwrap()
    );
    assert!(
        !s.put_blob("sha256:b1", blob.len() as u64, &mut &blob[..])
            .unwrap()
    );
    assert_eq!(s.blob_size("sha256:b1").unwrap(), Some(blob.len() as u64));
    let mut back = Vec::new();
    for i in 0..3 {
        back.extend(s.blob_chunk("sha256:b1", i).unwrap().unwrap());
    }
    assert_eq!(back, blob);
    assert_eq!(s.blob_chunk("sha256:b1", 3).unwrap(), None);
    assert_eq!(s.blob_chunk("sha256:none", 0).unwrap(), None);
    // A reader shorter than the size stores nothing.
    let err = s.put_blob("sha256:b2", 10, &mut &[1u8, 2][..]).unwrap_err();
    assert!(matches!(err, StoreError::BlobRead { .. }), "{err}");
    assert_eq!(s.blob_size("sha256:b2").unwrap(), None);
    assert_eq!(s.blob_chunk("sha256:b2", 0).unwrap(), None);
}

/// A push stores the image once and (re)starts its deliveries; updates need a delivery.
pub(super) fn pushes_and_deliveries(s: Box<dyn Store>) {
    s.add_push(&image(), &[delivery("a2"), delivery("a1")])
        .unwrap();
    assert_eq!(s.get_image("sha256:aa").unwrap(), Some(image()));
    assert_eq!(s.get_image("sha256:bb").unwrap(), None);
    let all = s.list_deliveries(None).unwrap();
    assert_eq!(
        all.iter().map(|d| d.agent_id.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(all[0], delivery("a1"));
    let done = DeliveryRecord {
        state: "delivered".into(),
        bytes_total: 5,
        bytes_done: 5,
        bytes_sent: 7,
        layers_present: 2,
        ..delivery("a1")
    };
    assert!(s.update_delivery(&done).unwrap());
    assert!(!s.update_delivery(&delivery("a3")).unwrap());
    assert_eq!(s.list_deliveries(Some("a1")).unwrap(), vec![done]);
    // A second push of the same image restarts the delivery and keeps the image.
    let again = ImageRecord {
        reference: "other:2".into(),
        ..image()
    };
    s.add_push(&again, &[delivery("a1")]).unwrap();
    assert_eq!(s.get_image("sha256:aa").unwrap(), Some(image()));
    assert_eq!(s.list_deliveries(Some("a1")).unwrap(), vec![delivery("a1")]);
    assert_eq!(s.list_deliveries(Some("a3")).unwrap(), vec![]);
}

/// A failed push leaves neither the image nor any delivery.
pub(super) fn push_fails_whole(s: Box<dyn Store>) {
    assert!(s.add_push(&image(), &[delivery("a1")]).is_err());
    assert_eq!(s.get_image("sha256:aa").unwrap(), None);
    assert_eq!(s.list_deliveries(None).unwrap(), vec![]);
}
